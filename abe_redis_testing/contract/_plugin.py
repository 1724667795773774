"""pytest hooks of the contract suite: its one setting, the suite-wide timeout."""

from __future__ import annotations

import pytest

from abe_redis_testing._options import add_option, get_option

TIMEOUT_OPTION = "contract_timeout"


def pytest_addoption(parser: pytest.Parser) -> None:
    add_option(
        parser,
        TIMEOUT_OPTION,
        "Seconds the contract suite waits for any expected message or operation before failing "
        "(overrides the `timeout` attribute of QueueBackendContract subclasses).",
        kind="float",
        default=None,
    )


def timeout_from_config(config: pytest.Config) -> float | None:
    """The configured suite timeout, or None when unset or when this plugin is not loaded."""
    try:
        value = get_option(config, TIMEOUT_OPTION)
    except ValueError:
        # The ini key is unknown because nobody loaded this plugin; the class attribute applies.
        return None
    if value is None:
        return None
    timeout = float(value)
    if timeout <= 0:
        raise pytest.UsageError(f"--abe-redis-contract-timeout must be positive, got {timeout}")
    return timeout
