"""The embedded Toxiproxy server: in a background thread (:class:`EmbeddedToxiproxy`) or in the
foreground as the ``abe-redis-toxiproxy`` console script (:func:`main`)."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from ._api import API_VERSION, ToxiproxyApi
from ._http import HttpServer
from ._proxy import ApiError, ProxyCollection

log = logging.getLogger("abe_redis_testing.toxiproxy")

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8474
START_TIMEOUT = 10.0


class _Runtime:
    """The collection plus its HTTP server, living on one event loop."""

    def __init__(self, seed: int | None = None) -> None:
        self.collection = ProxyCollection(seed)
        self.http = HttpServer(ToxiproxyApi(self.collection))

    async def start(self, host: str, port: int, config: Any = None) -> tuple[str, int]:
        if config is not None:
            await self.collection.populate(config)
        return await self.http.start(host, port)

    async def close(self) -> None:
        await self.http.close()
        await self.collection.shutdown()
        # Let cancelled connection tasks unwind before the loop closes, so none is destroyed
        # while pending (which asyncio reports as an error).
        current = asyncio.current_task()
        remaining = [task for task in asyncio.all_tasks() if task is not current]
        for task in remaining:
            task.cancel()
        if remaining:
            await asyncio.wait(remaining, timeout=5.0)


class EmbeddedToxiproxy:
    """A Toxiproxy-2.x-compatible server whose asyncio loop runs in its own daemon thread, so
    synchronous clients (``requests``-based toxiproxy-python, blocking test code) can use it.

    ``seed`` fixes the toxics' randomness (latency jitter, toxicity draws, slicer sizes): the
    same seed, proxies and traffic give the same choices. ``None`` seeds from the OS.

    >>> with EmbeddedToxiproxy(seed=42) as server:   # doctest: +SKIP
    ...     print(server.url)                        # http://127.0.0.1:<free port>
    """

    def __init__(self, host: str = DEFAULT_HOST, port: int = 0, *, seed: int | None = None) -> None:
        self.seed = seed
        self._requested = (host, port)
        self._address: tuple[str, int] | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    def __repr__(self) -> str:
        state = self.url if self._address else "stopped"
        return f"<EmbeddedToxiproxy {state}>"

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and self._address is not None

    @property
    def host(self) -> str:
        return self._bound()[0]

    @property
    def api_port(self) -> int:
        return self._bound()[1]

    @property
    def url(self) -> str:
        host, port = self._bound()
        return f"http://{host}:{port}"

    def _bound(self) -> tuple[str, int]:
        if self._address is None:
            raise RuntimeError("EmbeddedToxiproxy is not running; call start() first")
        return self._address

    def start(self) -> Self:
        if self.running:
            return self
        self._ready.clear()
        self._error = None
        self._thread = threading.Thread(target=self._run, name="abe-redis-toxiproxy", daemon=True)
        self._thread.start()
        if not self._ready.wait(START_TIMEOUT):
            raise RuntimeError(f"embedded toxiproxy did not start within {START_TIMEOUT} s")
        if self._error is not None:
            self._thread.join(START_TIMEOUT)
            self._thread = None
            raise RuntimeError(f"embedded toxiproxy failed to start: {self._error}") from self._error
        return self

    def stop(self, timeout: float = 10.0) -> None:
        thread, loop, stop = self._thread, self._loop, self._stop
        if thread is None:
            return
        if loop is not None and stop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(stop.set)
        thread.join(timeout)
        if thread.is_alive():
            raise RuntimeError(f"embedded toxiproxy did not stop within {timeout} s")
        self._thread = None
        self._address = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._main())
        finally:
            loop.close()
            self._loop = None

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        runtime = _Runtime(self.seed)
        try:
            self._address = await runtime.start(*self._requested)
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            await runtime.close()
            return
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            await runtime.close()


async def _serve_forever(host: str, port: int, config: Any, seed: int | None) -> None:
    runtime = _Runtime(seed)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    bound_host, bound_port = await runtime.start(host, port, config)
    print(
        f"abe-redis-toxiproxy (Toxiproxy {API_VERSION} API) listening on http://{bound_host}:{bound_port}"
        + (f" (seed {seed})" if seed is not None else ""),
        flush=True,
    )
    try:
        await stop.wait()
    finally:
        await runtime.close()
        log.info("stopped")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the embedded Toxiproxy server in the foreground until SIGINT/SIGTERM."""
    parser = argparse.ArgumentParser(
        prog="abe-redis-toxiproxy",
        description="A Toxiproxy-2.x-API-compatible server (pure Python), for tests without the Go binary.",
    )
    parser.add_argument("--host", default=DEFAULT_HOST, help=f"API host (default {DEFAULT_HOST})")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"API port (default {DEFAULT_PORT})")
    parser.add_argument("--config", type=Path, help="JSON file with a list of proxies to populate at start")
    parser.add_argument(
        "--seed",
        type=int,
        help="seed for the toxics' randomness (jitter, toxicity, slice sizes); default: random",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log proxy and connection events")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    config: Any = None
    if args.config is not None:
        try:
            config = json.loads(args.config.read_text())
        except (OSError, ValueError) as exc:
            print(f"abe-redis-toxiproxy: cannot read config {args.config}: {exc}", file=sys.stderr)
            return 2
    try:
        asyncio.run(_serve_forever(args.host, args.port, config, args.seed))
    except ApiError as exc:
        print(f"abe-redis-toxiproxy: {exc.message}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"abe-redis-toxiproxy: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
