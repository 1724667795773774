"""A Docker Engine API double, just big enough for testcontainers' RedisContainer flow.

It listens on 127.0.0.1 (point ``DOCKER_HOST=tcp://127.0.0.1:<port>`` at it) and answers
``containers/create`` + ``start`` by starting a real ``redis-server`` on a free port, reported as
the host port mapped to the container's ``6379/tcp``. Every request is recorded, and requests it
does not implement are answered 404 and listed in :attr:`DockerDouble.unhandled` so a test can
show exactly which endpoint a newer testcontainers started to need.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import struct
import subprocess
import tempfile
import threading
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from abe_redis_testing.servers import RedisServer, find_redis_server

API_VERSION = "1.45"
_VERSION_PREFIX = re.compile(r"^/v\d+\.\d+")


@dataclass
class FakeContainer:
    id: str
    name: str
    image: str
    cmd: list[str]
    labels: dict[str, str]
    exposed: list[str]
    status: str = "created"
    server: RedisServer | None = None
    exit_code: int = 0
    network_mode: str = "default"
    #: With ``NetworkMode: host`` the container's own command runs as a local process.
    process: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None

    def refresh(self) -> None:
        if self.process is not None and self.status == "running" and self.process.poll() is not None:
            self.status = "exited"
            self.exit_code = self.process.returncode

    def host_port(self) -> str:
        assert self.server is not None
        return str(self.server.port)

    def ports(self) -> dict[str, list[dict[str, str]] | None]:
        if self.status != "running" or self.server is None:
            return {port: None for port in self.exposed}
        return {port: [{"HostIp": "0.0.0.0", "HostPort": self.host_port()}] for port in self.exposed}

    def inspect(self) -> dict[str, Any]:
        self.refresh()
        running = self.status == "running"
        return {
            "Id": self.id,
            "Name": "/" + self.name,
            "Image": "sha256:" + "0" * 64,
            "Created": "2024-01-01T00:00:00Z",
            "Config": {"Image": self.image, "Cmd": self.cmd, "Labels": self.labels, "Tty": False},
            "State": {
                "Status": self.status,
                "Running": running,
                "Paused": False,
                "Restarting": False,
                "Dead": False,
                "ExitCode": self.exit_code,
                "Pid": self._pid() if running else 0,
            },
            "HostConfig": {"NetworkMode": self.network_mode},
            "NetworkSettings": {
                "Ports": self.ports(),
                "Networks": {"bridge": {"IPAddress": "127.0.0.1", "Gateway": "127.0.0.1"}},
            },
        }

    def _pid(self) -> int:
        if self.process is not None:
            return self.process.pid
        return (self.server.pid or 0) if self.server else 0

    def summary(self) -> dict[str, Any]:
        info = self.inspect()
        return {
            "Id": self.id,
            "Names": [info["Name"]],
            "Image": self.image,
            "State": self.status,
            "Labels": self.labels,
            "HostConfig": info["HostConfig"],
            "NetworkSettings": {"Networks": info["NetworkSettings"]["Networks"]},
        }


@dataclass
class DockerDouble:
    """Run with ``with DockerDouble() as double:``; ``double.docker_host`` goes into DOCKER_HOST."""

    requests: list[tuple[str, str]] = field(default_factory=list)
    unhandled: list[tuple[str, str]] = field(default_factory=list)
    containers: dict[str, FakeContainer] = field(default_factory=dict)
    pulled: set[str] = field(default_factory=set)
    #: Images whose pull answers 404, like a registry without that tag.
    missing_images: set[str] = field(default_factory=set)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _httpd: _EngineServer | None = None
    _thread: threading.Thread | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def port(self) -> int:
        assert self._httpd is not None
        return int(self._httpd.server_address[1])

    @property
    def docker_host(self) -> str:
        return f"tcp://127.0.0.1:{self.port}"

    def start(self) -> Self:
        self._httpd = _EngineServer(("127.0.0.1", 0), _Handler)
        self._httpd.double = self
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="docker-double", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        for container in list(self.containers.values()):
            if container.server is not None:
                container.server.cleanup()
            self.stop_container(container, kill=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def paths(self) -> list[str]:
        return [path for _, path in self.requests]

    # -- engine behaviour ---------------------------------------------------------------------

    def create(self, body: dict[str, Any], name: str | None) -> FakeContainer:
        with self._lock:
            number = next(self._ids)
        container_id = f"{number:064x}"
        cmd = body.get("Cmd") or ["redis-server"]
        if isinstance(cmd, str):
            cmd = cmd.split()
        container = FakeContainer(
            id=container_id,
            name=name or f"double_{number}",
            image=str(body.get("Image", "")),
            cmd=list(cmd),
            labels=dict(body.get("Labels") or {}),
            exposed=sorted((body.get("ExposedPorts") or {}).keys()),
            network_mode=str((body.get("HostConfig") or {}).get("NetworkMode") or "default"),
        )
        self.containers[container_id] = container
        return container

    def start_container(self, container: FakeContainer) -> None:
        if container.network_mode == "host":
            # On the host's network the command (port, bind, dir, config file) is used as given.
            fd, name = tempfile.mkstemp(prefix="docker-double-", suffix=".log")
            os.close(fd)
            container.log_path = Path(name)
            with container.log_path.open("ab") as log:
                container.process = subprocess.Popen(
                    [str(find_redis_server()), *container.cmd[1:]],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            container.status = "running"
            return
        # The image's entrypoint runs ``redis-server <args>``; keep user args such as --requirepass.
        args = container.cmd[1:] if container.cmd and container.cmd[0] == "redis-server" else []
        container.server = RedisServer(find_redis_server(), extra_args=args).start()
        container.status = "running"

    def stop_container(self, container: FakeContainer, *, kill: bool = False) -> None:
        if container.process is not None:
            if container.process.poll() is None:
                if kill:
                    container.process.kill()
                else:
                    container.process.terminate()
                container.process.wait(timeout=10)
            container.exit_code = container.process.returncode
        if container.server is not None:
            if kill:
                container.server.kill()
                container.exit_code = 137
            else:
                container.server.stop()
                container.exit_code = 0
        container.status = "exited"

    def find(self, ident: str) -> FakeContainer | None:
        for container in self.containers.values():
            if container.id.startswith(ident) or container.name == ident:
                return container
        return None

    def logs(self, container: FakeContainer) -> bytes:
        text = container.server.log_tail(200) + "\n" if container.server else ""
        if container.log_path is not None and container.log_path.exists():
            text = container.log_path.read_text(errors="replace")
        payload = text.encode()
        # Non-TTY containers multiplex stdout/stderr: 8-byte header (stream, 0, 0, 0, big-endian size).
        return struct.pack(">BxxxL", 1, len(payload)) + payload if payload else b""


class _EngineServer(ThreadingHTTPServer):
    double: DockerDouble


class _Handler(BaseHTTPRequestHandler):
    server: _EngineServer
    protocol_version = "HTTP/1.1"

    @property
    def owner(self) -> DockerDouble:
        return self.server.double

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    # -- plumbing -------------------------------------------------------------------------------

    def _send(self, status: int, body: bytes = b"", content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Api-Version", API_VERSION)
        self.end_headers()
        if body and self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, payload: Any) -> None:
        self._send(status, json.dumps(payload).encode())

    def _error(self, status: int, message: str) -> None:
        self._json(status, {"message": message})

    def _body(self) -> dict[str, Any]:
        length = int(self.headers.get("Content-Length") or 0)
        if not length:
            return {}
        data = json.loads(self.rfile.read(length) or b"{}")
        return data if isinstance(data, dict) else {}

    def _dispatch(self, method: str) -> None:
        parsed = urllib.parse.urlsplit(self.path)
        path = _VERSION_PREFIX.sub("", parsed.path)
        query = urllib.parse.parse_qs(parsed.query)
        double = self.owner
        double.requests.append((method, path))
        try:
            handled = self._route(method, path, query)
        except Exception as exc:
            self._error(500, f"docker double failed on {method} {path}: {exc!r}")
            return
        if not handled:
            double.unhandled.append((method, path))
            self._error(404, f"docker double does not implement {method} {path}")

    def _route(self, method: str, path: str, query: dict[str, list[str]]) -> bool:
        double = self.owner
        if path == "/_ping" and method in {"GET", "HEAD"}:
            self._send(200, b"OK", "text/plain")
            return True
        if path == "/version" and method == "GET":
            self._json(
                200,
                {
                    "Version": "27.0.0-double",
                    "ApiVersion": API_VERSION,
                    "MinAPIVersion": "1.24",
                    "Os": "linux",
                    "Arch": "amd64",
                    "Platform": {"Name": "abe-redis docker double"},
                    "Components": [],
                },
            )
            return True
        if path == "/info" and method == "GET":
            self._json(
                200, {"ID": "double", "Containers": len(double.containers), "OperatingSystem": "double"}
            )
            return True
        if path == "/networks" and method == "GET":
            self._json(200, [])
            return True
        if path == "/images/create" and method == "POST":
            image = query.get("fromImage", [""])[0]
            tag = query.get("tag", ["latest"])[0]
            ref = image if (":" in image.rsplit("/", 1)[-1] or not tag) else f"{image}:{tag}"
            if ref in double.missing_images:
                self._error(404, f"manifest for {ref} not found: manifest unknown")
                return True
            double.pulled.add(ref)
            lines = [
                {"status": f"Pulling from {image}", "id": tag},
                {"status": f"Downloaded newer image for {ref}"},
            ]
            self._send(200, b"".join(json.dumps(line).encode() + b"\r\n" for line in lines))
            return True
        image_match = re.fullmatch(r"/images/(.+)/json", path)
        if image_match and method == "GET":
            ref = urllib.parse.unquote(image_match.group(1))
            if ref not in double.pulled:
                self._error(404, f"No such image: {ref}")
                return True
            self._json(200, {"Id": "sha256:" + "1" * 64, "RepoTags": [ref], "Os": "linux"})
            return True
        if path == "/containers/create" and method == "POST":
            created = double.create(self._body(), query.get("name", [None])[0])
            self._json(201, {"Id": created.id, "Warnings": []})
            return True
        if path == "/containers/json" and method == "GET":
            filters = json.loads(query.get("filters", ["{}"])[0] or "{}")
            wanted = filters.get("id") or []
            show_all = query.get("all", ["0"])[0] in {"1", "true", "True"}
            rows = [
                c.summary()
                for c in double.containers.values()
                if (show_all or c.status == "running")
                and (not wanted or any(c.id.startswith(w) for w in wanted))
            ]
            self._json(200, rows)
            return True
        match = re.fullmatch(r"/containers/([^/]+)(/[a-z]+)?", path)
        if match is None:
            return False
        found = double.find(match.group(1))
        action = match.group(2) or ""
        if found is None:
            self._error(404, f"No such container: {match.group(1)}")
            return True
        container = found
        container.refresh()
        if action == "/json" and method == "GET":
            self._json(200, container.inspect())
        elif action == "/start" and method == "POST":
            if container.status != "running":
                double.start_container(container)
            self._send(204)
        elif action == "/stop" and method == "POST":
            double.stop_container(container)
            self._send(204)
        elif action == "/kill" and method == "POST":
            double.stop_container(container, kill=True)
            self._send(204)
        elif action == "/wait" and method == "POST":
            self._json(200, {"StatusCode": container.exit_code})
        elif action == "/logs" and method == "GET":
            self._send(200, double.logs(container), "application/vnd.docker.raw-stream")
        elif action == "" and method == "DELETE":
            if container.status == "running" and query.get("force", ["0"])[0] not in {"1", "true", "True"}:
                self._error(409, "You cannot remove a running container. Stop the container before removing")
                return True
            double.stop_container(container, kill=True)
            if container.server is not None:
                with contextlib.suppress(Exception):
                    container.server.cleanup()
            del double.containers[container.id]
            self._send(204)
        else:
            return False
        return True


def main() -> None:  # pragma: no cover - manual exploration helper
    with DockerDouble() as double:
        print(f"DOCKER_HOST={double.docker_host}", flush=True)
        threading.Event().wait()


if __name__ == "__main__":  # pragma: no cover
    main()
