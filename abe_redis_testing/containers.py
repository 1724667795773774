"""Redis in a Docker container through testcontainers, with a quick "is Docker there?" check.

The check talks to the Docker Engine API (``/_ping``) with a short timeout, so a machine without
Docker costs a fraction of a second, never testcontainers' two-minute retry loop.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass
from typing import Any

from abe_redis_testing.servers import (
    _BIND_FAILURE_MARKERS,
    RedisEndpoint,
    RedisServer,
    ServerStartError,
    _BindFailed,
    _register,
    _unregister,
)

__all__ = [
    "DEFAULT_IMAGE",
    "ContainerRedisServer",
    "DockerCheck",
    "RedisContainerHandle",
    "container_start_errors",
    "docker_available",
    "start_redis_container",
]

DEFAULT_IMAGE = "redis:7.4.1-alpine"
DEFAULT_DOCKER_TIMEOUT = 2.0


@dataclass(frozen=True)
class DockerCheck:
    """Truthy when Docker answered; ``reason`` says why not (or where it answered)."""

    available: bool
    reason: str

    def __bool__(self) -> bool:
        return self.available


def _docker_host() -> str | None:
    # Resolve the engine address exactly as testcontainers will, so the check and the real start
    # agree (DOCKER_HOST, ~/.testcontainers.properties, docker context).
    try:
        from testcontainers.core.docker_client import get_docker_host
    except ImportError:
        return os.environ.get("DOCKER_HOST") or None
    host = get_docker_host()
    return str(host) if host else None


def docker_available(timeout: float = DEFAULT_DOCKER_TIMEOUT) -> DockerCheck:
    """Ping the Docker Engine API within ``timeout`` seconds."""
    try:
        import docker
    except ImportError as exc:
        return DockerCheck(False, f"the docker SDK is not installed ({exc})")
    try:
        import testcontainers  # noqa: F401
    except ImportError as exc:
        return DockerCheck(False, f"testcontainers is not installed ({exc})")
    host = _docker_host()
    where = host or "the default Docker socket"
    client: Any = None
    try:
        if host:
            client = docker.DockerClient(base_url=host, timeout=timeout, version="auto")
        else:
            client = docker.from_env(timeout=timeout)
        if not client.ping():
            return DockerCheck(False, f"Docker at {where} did not answer /_ping with OK")
    except Exception as exc:
        return DockerCheck(False, f"Docker is not reachable at {where}: {type(exc).__name__}: {exc}")
    finally:
        if client is not None:
            client.close()
    return DockerCheck(True, f"Docker answered at {where}")


def container_start_errors() -> tuple[type[BaseException], ...]:
    """What starting a container raises when the *environment* is at fault: the engine refuses or
    goes away, the image cannot be pulled or run, the container never becomes ready. Anything
    else is a bug and should surface, not turn into a skip."""
    import redis.exceptions

    errors: list[type[BaseException]] = [OSError, TimeoutError, redis.exceptions.ConnectionError]
    with contextlib.suppress(ImportError):
        import docker.errors

        errors.append(docker.errors.DockerException)
    with contextlib.suppress(ImportError):
        import requests.exceptions

        errors.append(requests.exceptions.RequestException)
    with contextlib.suppress(ImportError):
        from testcontainers.core import exceptions as tc

        errors += [tc.ContainerStartException, tc.ContainerConnectException, tc.ContainerIsNotRunning]
    return tuple(errors)


def _redis_container_class() -> Any:
    try:
        from testcontainers.community.redis import RedisContainer
    except ImportError:
        # testcontainers < 4.9 shipped the module at its old place.
        from testcontainers.redis import RedisContainer
    return RedisContainer


class RedisContainerHandle:
    """A started Redis container; :meth:`stop` removes it (force, with volumes)."""

    def __init__(self, container: Any, image: str) -> None:
        self.container = container
        self.image = image
        self.host: str = str(container.get_container_host_ip())
        self.port: int = int(container.get_exposed_port(container.port))

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def endpoint(self) -> RedisEndpoint:
        return RedisEndpoint(
            kind="container",
            host=self.host,
            port=self.port,
            url=self.url,
            container=self,
            details={"image": self.image},
        )

    def stop(self) -> None:
        self.container.stop()

    def __repr__(self) -> str:
        return f"<RedisContainerHandle {self.image} {self.host}:{self.port}>"


def start_redis_container(image: str = DEFAULT_IMAGE) -> RedisContainerHandle:
    """Start ``image`` and wait until it answers PING (testcontainers' own wait strategy)."""
    container = _redis_container_class()(image=image)
    container.start()
    try:
        return RedisContainerHandle(container, image)
    except BaseException:
        container.stop()
        raise


class ContainerRedisServer(RedisServer):
    """A :class:`RedisServer` whose process runs in a container of ``image`` on the host's network.

    The command line, data dir (bind-mounted at the same path) and port are those of a local
    process, so cluster and sentinel nodes announce loopback addresses the test process reaches,
    and :meth:`kill` / :meth:`start` keep port and data. Host networking reaches the host's
    loopback on a Linux engine; Docker Desktop needs its host-networking option. The container
    runs as the calling user, so the node can write its data dir.
    """

    def __init__(
        self,
        binary: str | os.PathLike[str] = "redis-server",
        *,
        image: str = DEFAULT_IMAGE,
        docker_timeout: float = DEFAULT_DOCKER_TIMEOUT,
        **settings: Any,
    ) -> None:
        super().__init__(binary, **settings)
        self.image = image
        self.docker_timeout = docker_timeout
        self._container: Any = None

    @property
    def is_running(self) -> bool:
        if self._container is None:
            return False
        try:
            self._container.reload()
        except container_start_errors():
            return False
        return bool(self._container.status == "running")

    @property
    def pid(self) -> int | None:
        return None

    def __repr__(self) -> str:
        state = "running" if self.is_running else "stopped"
        return f"<ContainerRedisServer {self.image} {self.host}:{self.port} {state}>"

    def _client(self) -> Any:
        import docker

        host = _docker_host()
        if host:
            return docker.DockerClient(base_url=host, timeout=max(self.docker_timeout, 30.0), version="auto")
        return docker.from_env(timeout=max(self.docker_timeout, 30.0))

    def _spawn_and_wait(self) -> None:
        assert self.data_dir is not None
        args = self.command_line()
        data = str(self.data_dir)
        self._container = self._client().containers.run(
            self.image,
            command=args,
            network_mode="host",
            volumes={data: {"bind": data, "mode": "rw"}},
            user=f"{os.getuid()}:{os.getgid()}",
            labels={"org.abe-redis.node": f"{self.host}:{self.port}"},
            detach=True,
        )
        _register(self)
        deadline = time.monotonic() + self.startup_timeout
        while True:
            if not self.is_running:
                tail = self.log_tail()
                self._reap()
                if any(marker in tail for marker in _BIND_FAILURE_MARKERS):
                    raise _BindFailed
                raise ServerStartError(
                    f"container {self.image} for {self.host}:{self.port} exited before PING.\n{tail}"
                )
            if self.ping(timeout=0.5):
                return
            if time.monotonic() > deadline:
                tail = self.log_tail()
                self.kill()
                raise ServerStartError(
                    f"container {self.image} on {self.host}:{self.port} did not answer PING within "
                    f"{self.startup_timeout:.1f}s.\n{tail}"
                )
            time.sleep(0.05)

    def log_tail(self, lines: int = 20) -> str:
        if self._container is None:
            return ""
        try:
            text = self._container.logs(tail=lines).decode(errors="replace")
        except container_start_errors():
            return ""
        return str(text)

    def stop(self, timeout: float = 10.0) -> None:
        with self._lock:
            if self._container is not None:
                with contextlib.suppress(*container_start_errors()):
                    self._container.stop(timeout=int(timeout))
            self._reap()

    def kill(self) -> None:
        with self._lock:
            if self._container is not None:
                with contextlib.suppress(*container_start_errors()):
                    self._container.kill()
            self._reap()

    def _reap(self) -> None:
        container, self._container = self._container, None
        if container is not None:
            with contextlib.suppress(*container_start_errors()):
                container.remove(force=True)
        _unregister(self)
