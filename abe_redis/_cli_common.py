"""What every ``abe-redis`` subcommand shares: how errors end a command, which server it talks
to, and how data is printed without rich reading it as markup."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping

from rich.console import Console
from rich.text import Text

from . import RedisStreamsBackend


class CliError(Exception):
    """A problem the user can fix; printed as one line, exit status 2."""


# Variables that say how to reach and authenticate to a server. Every other ``REDIS_*`` variable
# (streams, pattern, registry, group, timings, dead-letter suffix) describes an application's
# streams; a verification run must never pick those up, or it would attach to them.
_CONNECTION_VARIABLE = re.compile(
    r"REDIS_(URL|USERNAME|PASSWORD|SSL(_\w+)?|TLS(_\w+)?|MAX_CONNECTIONS|POOL_TIMEOUT|"
    r"SOCKET_\w+|RETRY_\w+|CLIENT_NAME)"
)


def is_connection_variable(name: str) -> bool:
    return bool(_CONNECTION_VARIABLE.fullmatch(name))


def connection_environment(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The connection settings of ``environ`` (default: the process environment), nothing else."""
    env = os.environ if environ is None else environ
    return {name: value for name, value in env.items() if is_connection_variable(name)}


def stream_variables(environ: Mapping[str, str] | None = None) -> list[str]:
    """The ``REDIS_*`` variables of ``environ`` that are not connection settings."""
    env = os.environ if environ is None else environ
    return [name for name in env if name.startswith("REDIS_") and not is_connection_variable(name)]


def resolve_url(url: str | None, command: str) -> str:
    """``--url`` if given, else ``$REDIS_URL``; never a default server nobody named."""
    resolved = url or os.environ.get("REDIS_URL")
    if not resolved:
        raise CliError(f"{command} needs --url or REDIS_URL")
    return resolved


def backend_for(url: str) -> RedisStreamsBackend:
    """A backend on ``url`` with every other setting (password, TLS, registry, suffix) from the
    environment, as the application that owns the streams would build it."""
    return RedisStreamsBackend.from_env({**os.environ, "REDIS_URL": url})


def plain(value: object) -> Text:
    """``value`` as literal text: brackets in data are never rich markup."""
    return Text(str(value))


def note(console: Console, message: str) -> None:
    """A dim progress or status line; ``message`` is printed literally."""
    console.print(Text(message, style="dim"))


def text(value: bytes | str) -> str:
    return value.decode("utf-8", "backslashreplace") if isinstance(value, bytes) else value
