"""fakeredis 2.40's blocking XREADGROUP bugs must not lose or stick messages (nor spin the CPU).

.ci/run installs fakeredis 2.40.0 into a side directory and points ABE_REDIS_OLD_FAKEREDIS at it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

OLD = os.environ.get("ABE_REDIS_OLD_FAKEREDIS")


@pytest.mark.skipif(
    not OLD, reason="set ABE_REDIS_OLD_FAKEREDIS to a directory with fakeredis 2.40 installed"
)
def test_nothing_lost_or_spinning_on_fakeredis_2_40() -> None:
    probe = Path(__file__).with_name("old_fakeredis_probe.py")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(OLD), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run(
        [sys.executable, str(probe)], capture_output=True, text=True, timeout=120, env=env, check=True
    )
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["version"].startswith("2.40")
    assert report["delivered"] == list(range(300))
    assert report["idle_cpu"] < 1.0, f"consumers spun while idle: {report['idle_cpu']:.2f}s CPU in 2s"
