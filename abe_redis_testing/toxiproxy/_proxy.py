"""The TCP side: proxies, their connections, and the per-direction toxic chains ("links").

Everything here runs on one asyncio loop; the API handlers call into it on the same loop, so
the only concurrency to manage is interleaving at ``await`` points (one lock per proxy).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
import struct
from dataclasses import dataclass
from typing import Any

from ._toxics import (
    ATTRIBUTES,
    STREAMS,
    Channel,
    Chunk,
    Stub,
    ToxicInputError,
    ToxicSpec,
    cannot_unmarshal,
    check_toxicity,
    parse_attributes,
    run_stage,
)

log = logging.getLogger("abe_redis_testing.toxiproxy")

READ_SIZE = 32 * 1024
UPSTREAM_CONNECT_TIMEOUT = 10.0


class ApiError(Exception):
    """An error with the HTTP status Toxiproxy answers it with."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.message = message
        self.status = status

    def to_json(self) -> dict[str, Any]:
        return {"error": self.message, "status": self.status}


def bad_request(detail: str) -> ApiError:
    return ApiError(f"bad request body: {detail}", 400)


def missing_field(detail: str) -> ApiError:
    return ApiError(f"missing required field: {detail}", 400)


PROXY_NOT_FOUND = ("proxy not found", 404)
PROXY_EXISTS = ("proxy already exists", 409)
TOXIC_NOT_FOUND = ("toxic not found", 404)
TOXIC_EXISTS = ("toxic already exists", 409)
INVALID_STREAM = ("stream was invalid, can be either upstream or downstream", 400)
INVALID_TOXIC_TYPE = ("invalid toxic type", 400)


def split_host_port(address: str) -> tuple[str, int]:
    host, sep, port_text = address.rpartition(":")
    if not sep:
        raise ValueError(f"address {address}: missing port in address")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        port = int(port_text)
    except ValueError:
        raise ValueError(f"address {address}: invalid port") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"address {address}: invalid port")
    return host, port


def join_host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _bind(listen: str) -> socket.socket:
    host, port = split_host_port(listen)
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


@dataclass(eq=False)
class _Stage:
    spec: ToxicSpec | None  # None: the hidden head stage every link starts with
    stub: Stub
    task: asyncio.Task[None] | None = None


class _Link:
    """One direction of one connection: reader -> head stage -> toxic stages -> writer.

    The head stage exists so that removing the first real toxic still has a predecessor to
    pause and rewire, exactly as Toxiproxy's hidden noop toxic.
    """

    def __init__(
        self,
        connection: _Connection,
        direction: str,
        specs: list[ToxicSpec],
        source: asyncio.StreamReader,
        dest: asyncio.StreamWriter,
        rng: random.Random,
    ) -> None:
        self.direction = direction
        self.connection = connection
        self.rng = rng
        self.dest = dest
        self._source = source
        self._closed = False
        channels = [Channel() for _ in range(len(specs) + 2)]
        self._input = channels[0]
        self._output = channels[-1]
        self._stages = [
            _Stage(spec, Stub(channels[i], channels[i + 1], connection.reset, rng))
            for i, spec in enumerate([None, *specs])
        ]
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._tasks.append(asyncio.create_task(self._read()))
        for stage in self._stages:
            self._run(stage)
        self._tasks.append(asyncio.create_task(self._write()))

    def cancel(self) -> None:
        self._closed = True
        current = asyncio.current_task()
        for task in [*self._tasks, *(s.task for s in self._stages if s.task is not None)]:
            if task is not current:
                task.cancel()

    def _run(self, stage: _Stage) -> None:
        if self._closed or stage.stub.closed:
            return
        stage.task = asyncio.create_task(run_stage(stage.spec, stage.stub))

    async def _interrupt(self, stage: _Stage) -> bool:
        """Stop the stage (it hands on what it holds); False if it had already finished."""
        task, stage.task = stage.task, None
        if task is not None and not task.done():
            task.cancel()
            await asyncio.wait({task})
        if task is not None and not task.cancelled() and task.exception() is not None:
            log.error("toxic stage failed", exc_info=task.exception())
        return not stage.stub.closed and not self._closed

    def _find(self, spec: ToxicSpec) -> int | None:
        for index, stage in enumerate(self._stages):
            if stage.spec is spec:
                return index
        return None

    async def add(self, spec: ToxicSpec) -> None:
        last = self._stages[-1]
        alive = await self._interrupt(last)
        new_input = Channel()
        stage = _Stage(spec, Stub(new_input, last.stub.output, self.connection.reset, self.rng))
        self._stages.append(stage)
        if not alive:
            stage.stub.closed = True
            return
        last.stub.output = new_input
        self._run(stage)
        self._run(last)

    async def update(self, spec: ToxicSpec) -> None:
        index = self._find(spec)
        if index is None:
            return
        stage = self._stages[index]
        if await self._interrupt(stage):
            self._run(stage)

    async def remove(self, spec: ToxicSpec) -> None:
        index = self._find(spec)
        if index is None:
            return
        stage = self._stages[index]
        previous = self._stages[index - 1]
        if not await self._interrupt(stage):
            del self._stages[index]
            return
        if spec.closes_on_remove:
            stage.stub.close()
            return
        previous_alive = await self._interrupt(previous)
        # Whatever sits between the two stages moves on in order: no byte is lost or reordered.
        while len(stage.stub.input):
            item = stage.stub.input.get_nowait()
            if item is None:
                stage.stub.close()
                break
            stage.stub.output.put_nowait(item)
        previous.stub.output = stage.stub.output
        del self._stages[index]
        if previous_alive:
            self._run(previous)

    async def _read(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                data = await self._source.read(READ_SIZE)
                if not data:
                    break
                await self._input.put(Chunk(data, loop.time()))
        except OSError:
            pass
        finally:
            self._input.put_nowait(None)

    async def _write(self) -> None:
        try:
            while True:
                chunk = await self._output.get()
                if chunk is None:
                    break
                self.dest.write(chunk.data)
                await self.dest.drain()
        except OSError:
            pass
        finally:
            self.connection.link_finished(self)


class _Connection:
    def __init__(
        self,
        proxy: ServedProxy,
        client: tuple[asyncio.StreamReader, asyncio.StreamWriter],
        upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    ) -> None:
        self.proxy = proxy
        self._writers = (client[1], upstream[1])
        # Each direction draws from its own generator, seeded from the proxy's in accept order,
        # so one direction's traffic does not shift the other's random choices.
        up_rng, down_rng = (random.Random(proxy.rng.getrandbits(64)) for _ in range(2))
        self.links = {
            "upstream": _Link(self, "upstream", proxy.chain("upstream"), client[0], upstream[1], up_rng),
            "downstream": _Link(
                self, "downstream", proxy.chain("downstream"), upstream[0], client[1], down_rng
            ),
        }
        self._finished = 0
        self.closed = False

    def start(self) -> None:
        for link in self.links.values():
            link.start()

    def link_finished(self, link: _Link) -> None:
        # Toxiproxy closes a link's destination when the link ends; the peer link then sees
        # EOF on that socket and winds down the other way.
        link.dest.close()
        self._finished += 1
        if self._finished == len(self.links):
            self._teardown()

    def reset(self) -> None:
        """Close both sockets with RST (SO_LINGER 0), as the reset_peer toxic does."""
        for writer in self._writers:
            sock = writer.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
        self._teardown()

    def abort(self) -> None:
        for writer in self._writers:
            writer.transport.abort()
        self._teardown()

    def _teardown(self) -> None:
        if self.closed:
            return
        self.closed = True
        for link in self.links.values():
            link.cancel()
        self.proxy.connections.discard(self)


class ServedProxy:
    """One proxy as the server runs it: a listener, its connections and its toxic chains."""

    def __init__(self, name: str, listen: str, upstream: str, rng: random.Random | None = None) -> None:
        self.rng = rng if rng is not None else random.Random()
        self.name = name
        self.listen = listen
        self.upstream = upstream
        self.enabled = False
        self.toxics: list[ToxicSpec] = []
        self.connections: set[_Connection] = set()
        self.lock = asyncio.Lock()
        self._server: asyncio.Server | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "listen": self.listen,
            "upstream": self.upstream,
            "enabled": self.enabled,
            "toxics": self.toxics_json(),
        }

    def toxics_json(self) -> list[dict[str, Any]]:
        # Toxiproxy lists the upstream chain first, then the downstream chain.
        return [t.to_json() for stream in STREAMS for t in self.toxics if t.stream == stream]

    def chain(self, stream: str) -> list[ToxicSpec]:
        return [t for t in self.toxics if t.stream == stream]

    def find_toxic(self, name: str) -> ToxicSpec:
        for toxic in self.toxics:
            if toxic.name == name:
                return toxic
        raise ApiError(*TOXIC_NOT_FOUND)

    # --- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        if self.enabled:
            return
        try:
            sock = _bind(self.listen)
        except (OSError, ValueError) as exc:
            detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise ApiError(f"listen tcp {self.listen}: bind: {detail.lower()}", 500) from None
        self._server = await asyncio.start_server(self._accept, sock=sock)
        host, port = sock.getsockname()[:2]
        # Echo the bound address (port 0 becomes the real port) as Toxiproxy does.
        self.listen = join_host_port(host, port)
        self.enabled = True
        log.info("proxy %s listening on %s -> %s", self.name, self.listen, self.upstream)

    async def stop(self) -> None:
        if not self.enabled:
            return
        self.enabled = False
        if self._server is not None:
            self._server.close()
            self._server = None
        for connection in list(self.connections):
            connection.abort()
        log.info("proxy %s stopped", self.name)

    async def update(self, listen: str, upstream: str, enabled: bool) -> None:
        if listen != self.listen or upstream != self.upstream:
            await self.stop()
            self.listen = listen
            self.upstream = upstream
        if enabled and not self.enabled:
            await self.start()
        elif not enabled:
            await self.stop()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            host, port = split_host_port(self.upstream)
            upstream = await asyncio.wait_for(asyncio.open_connection(host, port), UPSTREAM_CONNECT_TIMEOUT)
        except (OSError, ValueError, TimeoutError) as exc:
            log.warning("proxy %s: cannot connect to upstream %s: %s", self.name, self.upstream, exc)
            writer.transport.abort()
            return
        if not self.enabled:
            writer.transport.abort()
            upstream[1].transport.abort()
            return
        connection = _Connection(self, (reader, writer), upstream)
        self.connections.add(connection)
        connection.start()

    def _live_links(self, stream: str) -> list[_Link]:
        return [c.links[stream] for c in self.connections if not c.closed]

    # --- toxics -------------------------------------------------------------------------------

    async def add_toxic(self, body: Any) -> ToxicSpec:
        spec = _parse_new_toxic(body, self)
        links = self._live_links(spec.stream)
        self.toxics.append(spec)
        await asyncio.gather(*(link.add(spec) for link in links))
        return spec

    async def update_toxic(self, name: str, body: Any) -> ToxicSpec:
        spec = self.find_toxic(name)
        if not isinstance(body, dict):
            raise bad_request(cannot_unmarshal(body, "Go value of type toxics.ToxicWrapper"))
        try:
            attributes = parse_attributes(spec.type, body.get("attributes"), spec.attributes)
        except ToxicInputError as exc:
            raise bad_request(str(exc)) from None
        toxicity = _toxicity(body, spec.toxicity)
        spec.attributes = attributes
        spec.toxicity = toxicity
        await asyncio.gather(*(link.update(spec) for link in self._live_links(spec.stream)))
        return spec

    async def remove_toxic(self, name: str) -> None:
        spec = self.find_toxic(name)
        links = self._live_links(spec.stream)
        self.toxics.remove(spec)
        await asyncio.gather(*(link.remove(spec) for link in links))

    async def reset_toxics(self) -> None:
        for spec in list(self.toxics):
            await self.remove_toxic(spec.name)


def string_field(body: dict[str, Any], key: str, default: str) -> str:
    value = body.get(key)
    if value is None:
        return default
    if not isinstance(value, str):
        raise bad_request(cannot_unmarshal(value, f"Go struct field .{key} of type string"))
    return value


def number_field(body: dict[str, Any], key: str, default: float) -> float:
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise bad_request(cannot_unmarshal(value, f"Go struct field .{key} of type float32"))
    return float(value)


def bool_field(body: dict[str, Any], key: str, default: bool) -> bool:
    value = body.get(key)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise bad_request(cannot_unmarshal(value, f"Go struct field .{key} of type bool"))
    return value


def _toxicity(body: dict[str, Any], default: float) -> float:
    try:
        return check_toxicity(number_field(body, "toxicity", default))
    except ToxicInputError as exc:
        raise bad_request(str(exc)) from None


def _parse_new_toxic(body: Any, proxy: ServedProxy) -> ToxicSpec:
    # Same order of checks as Toxiproxy, so the same bad input gets the same error.
    if not isinstance(body, dict):
        raise bad_request(cannot_unmarshal(body, "Go value of type toxics.ToxicWrapper"))
    name = string_field(body, "name", "")
    toxic_type = string_field(body, "type", "")
    stream = string_field(body, "stream", "downstream").lower()
    toxicity = _toxicity(body, 1.0)
    if stream not in STREAMS:
        raise ApiError(*INVALID_STREAM)
    if not name:
        name = f"{toxic_type}_{stream}"
    if toxic_type not in ATTRIBUTES:
        raise ApiError(*INVALID_TOXIC_TYPE)
    if any(t.name == name for t in proxy.toxics):
        raise ApiError(*TOXIC_EXISTS)
    try:
        attributes = parse_attributes(toxic_type, body.get("attributes"))
    except ToxicInputError as exc:
        raise bad_request(str(exc)) from None
    return ToxicSpec(name=name, type=toxic_type, stream=stream, toxicity=toxicity, attributes=attributes)


class ProxyCollection:
    """All proxies of one server, in creation order."""

    def __init__(self, seed: int | None = None) -> None:
        self.proxies: dict[str, ServedProxy] = {}
        # The root of all randomness the toxics use: with a seed, the same proxies, connections
        # and traffic draw the same jitter, toxicity and slice sizes on every run.
        self.rng = random.Random(seed)

    def _new_proxy(self, name: str, listen: str, upstream: str) -> ServedProxy:
        return ServedProxy(name, listen, upstream, random.Random(self.rng.getrandbits(64)))

    def get(self, name: str) -> ServedProxy:
        try:
            return self.proxies[name]
        except KeyError:
            raise ApiError(*PROXY_NOT_FOUND) from None

    async def add(self, body: Any) -> ServedProxy:
        if not isinstance(body, dict):
            raise bad_request(cannot_unmarshal(body, "Go value of type toxiproxy.Proxy"))
        name = string_field(body, "name", "")
        listen = string_field(body, "listen", "")
        upstream = string_field(body, "upstream", "")
        enabled = bool_field(body, "enabled", True)
        if not name:
            raise missing_field("name")
        if not upstream:
            raise missing_field("upstream")
        if name in self.proxies:
            raise ApiError(*PROXY_EXISTS)
        proxy = self._new_proxy(name, listen or "127.0.0.1:0", upstream)
        if enabled:
            await proxy.start()
        # Re-check: another request may have taken the name while this one was binding.
        if name in self.proxies:
            await proxy.stop()
            raise ApiError(*PROXY_EXISTS)
        self.proxies[name] = proxy
        return proxy

    async def remove(self, name: str) -> None:
        proxy = self.get(name)
        async with proxy.lock:
            await proxy.stop()
            self.proxies.pop(name, None)

    async def populate(self, body: Any) -> list[ServedProxy]:
        if not isinstance(body, list):
            raise bad_request(cannot_unmarshal(body, "Go value of type []struct { toxiproxy.Proxy }"))
        planned: list[tuple[str, str, str, bool]] = []
        seen: set[str] = set()
        for index, item in enumerate(body, start=1):
            if not isinstance(item, dict):
                raise bad_request(cannot_unmarshal(item, "Go value of type toxiproxy.Proxy"))
            name = string_field(item, "name", "")
            upstream = string_field(item, "upstream", "")
            if not name:
                raise missing_field(f"name at proxy {index}")
            if not upstream:
                raise missing_field(f"upstream at proxy {index}")
            if name in seen:
                raise ApiError(f'duplicate proxy name "{name}"', 500)
            seen.add(name)
            listen = string_field(item, "listen", "") or "127.0.0.1:0"
            planned.append((name, listen, upstream, bool_field(item, "enabled", True)))
        result: list[ServedProxy] = []
        for name, listen, upstream, enabled in planned:
            existing = self.proxies.get(name)
            if existing is not None:
                if existing.listen == listen and existing.upstream == upstream:
                    result.append(existing)
                    continue
                await existing.stop()
                del self.proxies[name]
            proxy = self._new_proxy(name, listen, upstream)
            if enabled:
                await proxy.start()
            self.proxies[name] = proxy
            result.append(proxy)
        return result

    async def reset(self) -> None:
        for proxy in list(self.proxies.values()):
            async with proxy.lock:
                await proxy.start()
                await proxy.reset_toxics()

    async def shutdown(self) -> None:
        for proxy in list(self.proxies.values()):
            await proxy.stop()
        self.proxies.clear()
