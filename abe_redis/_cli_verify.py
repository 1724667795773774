"""``abe-redis verify``: the delivery checks, then the queue contract suite.

Where it runs: ``--url`` (else ``$REDIS_URL``); with neither, the embedded in-memory fake. It
never falls back to a server nobody named. Connection settings (password, TLS, pool) come from
the environment; everything else lives in a namespace of the run's own, deleted afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import uuid
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from . import RedisStreamsBackend
from ._cli_common import CliError, connection_environment, note, plain, stream_variables, text
from ._verify import VerifyReport, run_verify

FAKE_SPEC = "abe_redis_testing.fake:FakeRedisStreamsBackend"
OUR_SPEC = "abe_redis:RedisStreamsBackend"
TESTING_EXTRA = "pip install 'abe-redis[testing]'"
# What the contract suite imports; missing any of them means the testing extra is not installed.
_TESTING_MODULES = {"pytest", "_pytest", "pytest_asyncio", "hypothesis", "fakeredis"}


def run(args: argparse.Namespace, console: Console) -> int:
    if min(args.count, args.keys, args.consumers) < 1:
        raise CliError("--count, --keys and --consumers must be positive")
    url = args.url or os.environ.get("REDIS_URL") or None
    if args.backend:
        return 0 if contract_step(console, args.backend, url, args.capabilities, args.contract_timeout) else 1
    report = asyncio.run(
        run_verify(
            url=url,
            count=args.count,
            keys=args.keys,
            consumers=args.consumers,
            wait_s=args.timeout,
            progress=lambda step: note(console, f"… {step}"),
        )
    )
    print_report(console, report)
    contract_ok = args.no_contract or contract_step(
        console, None, url, args.capabilities, args.contract_timeout
    )
    return 0 if report.ok and contract_ok else 1


def print_report(console: Console, report: VerifyReport) -> None:
    table = Table(title=Text(f"abe-redis verify — {report.target}"))
    table.add_column("check")
    table.add_column("result")
    table.add_column("seconds", justify="right")
    table.add_column("detail")
    for check in report.checks:
        result = Text("PASS", style="green") if check.ok else Text("FAIL", style="red")
        table.add_row(plain(check.name), result, f"{check.seconds:.3f}", plain(check.detail))
    console.print(table)
    for check in report.checks:
        if "publish_per_s" in check.figures:
            console.print(
                f"publish: {check.figures['publish_per_s']:,.0f} msg/s   "
                f"consume: {check.figures['consume_per_s']:,.0f} msg/s"
            )
    _verdict(console, "verify", report.ok)


def _verdict(console: Console, what: str, ok: bool) -> None:
    console.print(
        Text(f"{what}: PASS", style="bold green") if ok else Text(f"{what}: FAIL", style="bold red")
    )


@dataclass
class ContractPlan:
    """What the contract subprocess runs against, and how its environment is set up."""

    spec: str
    capabilities: Any = None
    env: dict[str, str] = field(default_factory=dict)
    unset: list[str] = field(default_factory=list)
    cleanup_url: str | None = None
    namespace: str | None = None


def contract_step(
    console: Console, backend: str | None, url: str | None, capabilities: str | None, wait_s: float
) -> bool:
    """Run the contract suite and print its report; True when nothing failed (or it was skipped
    because the testing extra is missing and no ``--backend`` asked for it explicitly)."""
    try:
        from abe_redis_testing.contract import run_contract
    except ImportError as exc:
        if exc.name not in _TESTING_MODULES:
            raise
        if backend is not None:
            raise CliError(
                f"--backend runs the contract suite, which needs the testing extra: {TESTING_EXTRA}"
            ) from None
        note(console, f"contract suite skipped: it needs the testing extra ({TESTING_EXTRA})")
        return True
    plan = plan_contract(backend, url, capabilities)
    note(console, f"… contract suite against {plan.spec}")
    try:
        report = run_contract(
            plan.spec, plan.capabilities, timeout=wait_s, env=plan.env, unset_env=plan.unset
        )
    finally:
        if plan.cleanup_url and plan.namespace:
            asyncio.run(_delete_contract_keys(plan.cleanup_url, plan.namespace))
    from abe_redis_testing.contract import render_report

    render_report(report, console)
    _verdict(console, "contract", bool(report.ok))
    return bool(report.ok)


def plan_contract(backend: str | None, url: str | None, capabilities: str | None) -> ContractPlan:
    from abe_redis_testing.contract import Capabilities
    from abe_redis_testing.contract._runner import load_object, reset_hook

    spec = backend or (OUR_SPEC if url else FAKE_SPEC)
    module, sep, qualname = spec.partition(":")
    if not (module and sep and qualname):
        raise CliError(f"--backend must look like 'package.module:Class', got {spec!r}")
    try:
        backend_class = load_object(spec)
    except (ImportError, AttributeError) as exc:
        raise CliError(f"--backend {spec}: cannot import it ({type(exc).__name__}: {exc})") from None
    if not isinstance(backend_class, type):
        raise CliError(f"--backend {spec} is not a class")
    in_process = reset_hook(backend_class, spec) is not None
    if url is None and not in_process:
        raise CliError(
            f"--backend {spec} needs --url or REDIS_URL naming the server to test against "
            "(only backends with an in-process broker, declared by __abe_contract_reset__, run without one)"
        )
    plan = ContractPlan(spec=spec, unset=stream_variables())
    if capabilities is not None:
        try:
            plan.capabilities = Capabilities.parse(capabilities)
        except ValueError as exc:
            raise CliError(f"--capabilities: {exc}") from None
    if in_process:
        plan.unset.append("REDIS_URL")
        return plan
    assert url is not None
    plan.env["REDIS_URL"] = url
    if issubclass(backend_class, RedisStreamsBackend):
        _namespace(plan, url)
        if plan.capabilities is None:
            # claim_idle_ms 500 below, plus a margin for a loaded machine.
            plan.capabilities = Capabilities.all(redelivery_timeout=1.5)
    return plan


def _namespace(plan: ContractPlan, url: str) -> None:
    """A key prefix (registry, group and consumer records) of the run's own, deleted after the run."""
    namespace = f"abe-redis-contract:{uuid.uuid4().hex[:10]}"
    plan.namespace = namespace
    plan.cleanup_url = url
    plan.env.update(
        {
            "REDIS_KEY_PREFIX": f"{namespace}:",
            "REDIS_CONSUMER_GROUP": f"{namespace}:group",
            "REDIS_BLOCK_MS": "100",
            "REDIS_DISCOVERY_INTERVAL_MS": "100",
            "REDIS_CLAIM_IDLE_MS": "500",
            "REDIS_CLAIM_INTERVAL_MS": "100",
        }
    )


async def _delete_contract_keys(url: str, namespace: str) -> None:
    """The streams the run registered, their dead letters, and every key under its prefix."""
    env = {**connection_environment(), "REDIS_URL": url}
    async with RedisStreamsBackend.from_env(env, key_prefix=f"{namespace}:") as backend:
        client: Any = backend.client
        registry = backend.config.registry_key
        streams = [text(name) for name in await client.smembers(registry)] if registry else []
        doomed = {*streams, *(backend.config.dead_letter_stream(s) for s in streams)}
        doomed.update([text(key) async for key in client.scan_iter(match=f"{namespace}:*", count=1000)])
        if doomed:
            await client.delete(*doomed)
