"""``RedisConsumer``: a production runner for handlers, on the lease-based consume engine.

abe's ``AsyncLoopConsumer`` swallows handler errors, so through the bare protocol a failed handler
looks like a success. This runner knows the outcome of every handler:

* **returned** — the message is acknowledged (in the engine's next ack batch);
* **raised** — it is retried after an exponential, jittered delay while other messages keep
  flowing; each retry counts as a delivery in Redis, so the attempt count survives a restart;
  after ``max_attempts`` it goes to the dead letters with the error's type and text;
* **raised a permanent error** (:class:`PermanentError`, or a type passed as ``permanent=``) —
  dead-lettered at once.

Up to ``concurrency`` handlers run at once; plain ``def`` handlers run in a thread pool of their
own. Everything a handler holds stays leased by the engine, which renews the lease in the
background, so a long handler never loses its message to a peer. :meth:`RedisConsumer.shutdown`
(and SIGTERM, for a ``run()`` started from a script's main thread) stops reading, lets running
handlers finish within the grace period, acknowledges what finished and releases the rest, so
that peers can take it at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import random
import signal
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Self

from ._backend import RedisStreamsBackend
from ._cluster_reader import ClusterReader
from ._config import RedisConfig
from ._delivery import GroupReader
from ._errors import AbeRedisError, ConfigurationError
from ._message import ReceivedMessage
from ._retention import Retention
from .metrics import MetricsHook, emit

__all__ = ["Handler", "PermanentError", "RedisConsumer"]

log = logging.getLogger("abe_redis")

Handler = Callable[[ReceivedMessage], Awaitable[None] | None]
"""An ``async def`` or plain ``def`` taking the message (a dict with delivery metadata)."""

_ERROR_TEXT_LIMIT = 500


class PermanentError(AbeRedisError):
    """Raise it (or a subclass) from a handler when retrying cannot help: the message goes to the
    dead letters at once, with this error's type and text."""


def _type_name(exc: BaseException) -> str:
    kind = type(exc)
    return kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"


def _error_text(exc: BaseException) -> str:
    text = str(exc)
    return text if len(text) <= _ERROR_TEXT_LIMIT else text[:_ERROR_TEXT_LIMIT] + "…"


class RedisConsumer:
    """Runs a handler over a consumer group: retries, dead letters, concurrency, graceful drain.

    Implements abe's ``EventConsumer`` protocol (``async run(handler)``, ``async shutdown()``), so
    a host application can use it wherever it used ``AsyncLoopConsumer``::

        backend = RedisStreamsBackend.from_env()
        consumer = RedisConsumer(backend, group="billing", concurrency=8)
        await consumer.run(handle)          # until shutdown() or SIGTERM

    Every keyword left out comes from the backend's :class:`~abe_redis.RedisConfig`
    (``REDIS_CONSUMER_CONCURRENCY``, ``REDIS_MAX_ATTEMPTS``, ``REDIS_RETRY_DELAY_MS``,
    ``REDIS_RETRY_MAX_DELAY_MS``, ``REDIS_SHUTDOWN_GRACE_S``, ``REDIS_SYNC_HANDLER_THREADS``,
    ``REDIS_RETENTION``, ``REDIS_RETENTION_INTERVAL_MS``).

    ``permanent``: exception types that are dead-lettered at once (besides :class:`PermanentError`).
    ``jitter``: the fraction of each retry delay that is random (0 gives exact delays).
    ``metrics``: a :class:`~abe_redis.metrics.MetricsHook` (default: the backend's ``metrics``).
    ``handle_signals``: install a SIGTERM handler while ``run()`` runs; by default only when
    ``run()`` is called from the main thread and SIGTERM has no handler yet.
    ``log_error_text``: include handlers' exception text and tracebacks in log lines (off by
    default: they may quote payloads).
    """

    def __init__(
        self,
        backend: RedisStreamsBackend,
        *,
        group: str | None = None,
        concurrency: int | None = None,
        max_attempts: int | None = None,
        retry_delay_s: float | None = None,
        retry_max_delay_s: float | None = None,
        jitter: float = 0.5,
        permanent: tuple[type[BaseException], ...] = (),
        shutdown_grace_s: float | None = None,
        sync_handler_threads: int | None = None,
        retention: bool | None = None,
        metrics: MetricsHook | None = None,
        handle_signals: bool | None = None,
        log_error_text: bool = False,
        owns_backend: bool = False,
    ) -> None:
        config = backend.config
        self._backend = backend
        self._config = config
        self.group = group if group is not None else config.consumer_group
        self.concurrency = concurrency if concurrency is not None else config.consumer_concurrency
        self.max_attempts = (
            max_attempts
            if max_attempts is not None
            else (config.max_attempts if config.max_attempts is not None else config.max_deliveries)
        )
        self.retry_delay_s = retry_delay_s if retry_delay_s is not None else config.retry_delay_ms / 1000
        self.retry_max_delay_s = (
            retry_max_delay_s if retry_max_delay_s is not None else config.retry_max_delay_ms / 1000
        )
        self.jitter = jitter
        self.permanent: tuple[type[BaseException], ...] = (PermanentError, *permanent)
        self.shutdown_grace_s = shutdown_grace_s if shutdown_grace_s is not None else config.shutdown_grace_s
        self.sync_handler_threads = (
            sync_handler_threads
            if sync_handler_threads is not None
            else (config.sync_handler_threads or self.concurrency)
        )
        self.retention = retention if retention is not None else config.retention == "acked"
        self.metrics: MetricsHook = metrics if metrics is not None else backend.metrics
        self._handle_signals = handle_signals
        self._log_error_text = log_error_text
        self._owns_backend = owns_backend
        self._validate()

        self._reader: GroupReader | ClusterReader | None = None
        self._slots = asyncio.Semaphore(self.concurrency)
        self._executor: ThreadPoolExecutor | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._busy: set[asyncio.Task[None]] = set()
        self._pump: asyncio.Task[None] | None = None
        self._waiting = False
        self._stop_sent = False
        self._stopping = False
        self._stop_at = 0.0
        self._ran = False

    def _validate(self) -> None:
        checks: list[tuple[str, object, bool, str]] = [
            ("concurrency", self.concurrency, self.concurrency >= 1, "must be at least 1"),
            ("max_attempts", self.max_attempts, self.max_attempts >= 1, "must be at least 1"),
            (
                "max_attempts",
                self.max_attempts,
                self.max_attempts <= self._config.max_deliveries,
                f"must not exceed max_deliveries={self._config.max_deliveries}: the engine "
                "dead-letters a message handed out more often than that",
            ),
            ("retry_delay_s", self.retry_delay_s, self.retry_delay_s >= 0, "must not be negative"),
            (
                "retry_max_delay_s",
                self.retry_max_delay_s,
                self.retry_max_delay_s >= 0,
                "must not be negative",
            ),
            ("jitter", self.jitter, 0 <= self.jitter <= 1, "must be between 0 and 1"),
            ("shutdown_grace_s", self.shutdown_grace_s, self.shutdown_grace_s >= 0, "must not be negative"),
            (
                "sync_handler_threads",
                self.sync_handler_threads,
                self.sync_handler_threads >= 1,
                "must be >= 1",
            ),
        ]
        for name, value, ok, problem in checks:
            if not ok:
                raise ConfigurationError(name, value, problem)
        for kind in self.permanent:
            if not (isinstance(kind, type) and issubclass(kind, BaseException)):
                raise ConfigurationError("permanent", kind, "expected exception types")

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, *, group: str | None = None, **kwargs: Any
    ) -> Self:
        """A consumer over ``RedisStreamsBackend.from_env(environ)``; it closes that backend when
        it stops. ``kwargs`` are the constructor's keywords."""
        return cls(RedisStreamsBackend.from_env(environ), group=group, owns_backend=True, **kwargs)

    @property
    def config(self) -> RedisConfig:
        return self._config

    @property
    def running(self) -> bool:
        return self._pump is not None and not self._pump.done()

    # -- the protocol ----------------------------------------------------------------------

    async def run(self, handler: Handler) -> None:
        """Handle messages until :meth:`shutdown` (or SIGTERM) and the drain that follows.

        Raises what the engine raises when consuming cannot go on (a
        :class:`~abe_redis.RedisSetupError`, say), after releasing every message it held.
        Cancelling the task that runs it stops at once: running handlers are cancelled and their
        messages released, unacknowledged.
        """
        if self._ran:
            raise RuntimeError("a RedisConsumer runs once; create a new one to run again")
        self._ran = True
        loop = asyncio.get_running_loop()
        # The backend's engine: one GroupReader, or in a Redis Cluster one per partition.
        self._reader = self._backend.group_reader(self.group)
        self._reader.metrics = self.metrics
        is_async = inspect.iscoroutinefunction(handler) or inspect.iscoroutinefunction(
            getattr(handler, "__call__", None)  # noqa: B004 - an object with an async __call__
        )
        self._pump = loop.create_task(
            self._run_pump(handler, is_async), name=f"abe-redis-consumer:{self.group}"
        )
        with self._signals(loop):
            try:
                await asyncio.shield(self._pump)
            except asyncio.CancelledError:
                if not self._pump.done():
                    self._request_stop(grace_s=0.0)
                    await asyncio.wait({self._pump})
                raise
            finally:
                if self._owns_backend:
                    await self._backend.aclose()

    async def shutdown(self) -> None:
        """Stop reading, let running handlers finish within ``shutdown_grace_s``, acknowledge
        what finished and release the rest (claimable by peers at once). Returns once done;
        safe to call more than once, and before ``run()``."""
        if self._pump is None:
            self._stopping = True
            return
        self._request_stop(grace_s=self.shutdown_grace_s)
        if asyncio.current_task() in self._tasks:
            # Called from a handler: the drain waits for this very handler, so waiting here would
            # stall until the grace period ends. The stop is requested; the handler finishes.
            return
        await asyncio.wait({self._pump})

    # -- internals -------------------------------------------------------------------------

    def _request_stop(self, *, grace_s: float) -> None:
        deadline = time.monotonic() + grace_s
        self._stop_at = deadline if not self._stopping else min(self._stop_at, deadline)
        self._stopping = True
        if self._pump is not None and self._waiting and not self._stop_sent:
            # The pump waits in receive() (or for a free slot): only a cancel interrupts it.
            self._stop_sent = True
            self._pump.cancel()
        if grace_s == 0.0:
            for task in self._tasks:
                task.cancel()

    @contextlib.contextmanager
    def _signals(self, loop: asyncio.AbstractEventLoop) -> Any:
        install = self._handle_signals
        if install is None:
            install = (
                threading.current_thread() is threading.main_thread()
                and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
            )
        if install:
            loop.add_signal_handler(signal.SIGTERM, self._on_sigterm)
        try:
            yield
        finally:
            if install:
                loop.remove_signal_handler(signal.SIGTERM)

    def _on_sigterm(self) -> None:
        if self._stopping:
            log.warning(
                "second SIGTERM: consumer of group %s stops now; unfinished messages are released",
                self.group,
                extra={"group": self.group},
            )
            self._request_stop(grace_s=0.0)
            return
        log.warning(
            "SIGTERM: consumer of group %s stops reading; handlers get %.1fs to finish",
            self.group,
            self.shutdown_grace_s,
            extra={"group": self.group, "grace_s": self.shutdown_grace_s},
        )
        self._request_stop(grace_s=self.shutdown_grace_s)

    async def _run_pump(self, handler: Handler, is_async: bool) -> None:
        """Receive and dispatch. This task calls ``receive()`` and lives until the consumer is
        closed: the engine renews leases only while the task that last received is alive."""
        reader = self._reader
        assert reader is not None
        me = asyncio.current_task()
        assert me is not None
        retention = self._start_retention()
        try:
            while not self._stopping:
                # Receive first, then wait for a slot: a slot is never held while the engine
                # waits for messages, so a retry whose delay is over always gets one.
                message: ReceivedMessage | None = None
                try:
                    self._waiting = True
                    message = await reader.receive()
                    await self._slots.acquire()
                except asyncio.CancelledError:
                    if message is not None:
                        reader.put_back(message)  # no handler saw it: releasing it counts nothing
                    if self._stop_sent and me.uncancel() == 0:
                        break  # our own stop request, not a cancel from outside
                    raise
                finally:
                    self._waiting = False
                task = asyncio.get_running_loop().create_task(self._process(handler, is_async, message))
                self._tasks.add(task)
                self._busy.add(task)
                task.add_done_callback(self._forget)
            await self._drain()
        finally:
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            if retention is not None:
                retention.cancel()
                await asyncio.gather(retention, return_exceptions=True)
            await reader.aclose()  # acks what finished, releases everything else
            if self._executor is not None:
                # Threads cannot be interrupted; a sync handler past the grace period runs on,
                # but its message was released above and is never acknowledged by this consumer.
                self._executor.shutdown(wait=False, cancel_futures=True)

    def _forget(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._busy.discard(task)

    async def _drain(self) -> None:
        """Wait for handlers that are running (not those waiting out a retry delay) until the
        grace period ends."""
        while self._busy:
            left = self._stop_at - time.monotonic()
            if left <= 0:
                break
            await asyncio.wait(set(self._busy), timeout=left)
        unfinished = len(self._busy)
        waiting = len(self._tasks) - unfinished
        if unfinished or waiting:
            # Only the non-zero parts: "0 handler(s) did not finish within 30s" read as a timeout
            # after a shutdown that only released retry waits.
            parts = []
            if unfinished:
                parts.append(f"{unfinished} handler(s) did not finish within {self.shutdown_grace_s:.1f}s")
            if waiting:
                parts.append(f"{waiting} message(s) waited for a retry")
            log.warning(
                "consumer of group %s stopping: %s; all are released for another consumer",
                self.group,
                " and ".join(parts),
                extra={"group": self.group, "unfinished": unfinished, "retry_waiting": waiting},
            )

    async def _process(self, handler: Handler, is_async: bool, message: ReceivedMessage) -> None:
        try:
            await self._attempts(handler, is_async, message)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # Redis failed while a dead letter or a retry was being recorded: the message is still
            # held. Give it back, so that it is handled again instead of waiting for the close.
            log.warning(
                "could not record the outcome of %s %s (%s); releasing it",
                message.stream,
                message.message_id,
                type(exc).__name__,
                extra={"stream": message.stream, "entry_id": message.message_id, "group": self.group},
            )
            reader = self._reader
            assert reader is not None
            with contextlib.suppress(Exception):
                await reader.release([message])

    async def _attempts(self, handler: Handler, is_async: bool, message: ReceivedMessage) -> None:
        reader = self._reader
        assert reader is not None
        me = asyncio.current_task()
        assert me is not None
        holding_slot = True
        try:
            while True:
                try:
                    await self._call(handler, is_async, message)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    if not await self._failed(message, exc):
                        return
                    # Wait out the delay without a slot, so other messages keep flowing.
                    self._busy.discard(me)
                    self._slots.release()
                    holding_slot = False
                    if self._stopping:
                        return  # held, unacknowledged: released on close, the attempt counted
                    await asyncio.sleep(self._delay(message.delivery_count))
                    if self._stopping:
                        return
                    await self._slots.acquire()
                    holding_slot = True
                    if self._stopping:
                        return
                    self._busy.add(me)
                    await reader.hand_again(message)
                    continue
                reader.done(message)
                return
        finally:
            if holding_slot:
                self._slots.release()

    async def _call(self, handler: Handler, is_async: bool, message: ReceivedMessage) -> None:
        if is_async:
            await handler(message)  # type: ignore[misc]
            return
        if self._executor is None:
            self._executor = ThreadPoolExecutor(
                max_workers=self.sync_handler_threads, thread_name_prefix=f"abe-redis-{self.group}"
            )
        result = await asyncio.get_running_loop().run_in_executor(self._executor, handler, message)
        if inspect.isawaitable(result):
            await result

    def _delay(self, attempt: int) -> float:
        """Exponential in the attempt that failed (1, 2, 4, … times ``retry_delay_s``), capped at
        ``retry_max_delay_s``; the last ``jitter`` fraction of it is random."""
        exponent = max(0, min(attempt - 1, 30))
        delay = min(self.retry_max_delay_s, self.retry_delay_s * float(2**exponent))
        return float(delay * (1 - self.jitter * random.random()))

    async def _failed(self, message: ReceivedMessage, exc: Exception) -> bool:
        """Dead-letter ``message`` if ``exc`` is permanent or this was the last attempt; True if
        it is to be retried."""
        reader = self._reader
        assert reader is not None
        attempt = message.delivery_count
        error_type = _type_name(exc)
        fields: dict[str, Any] = {
            "stream": message.stream,
            "entry_id": message.message_id,
            "group": self.group,
            "attempt": attempt,
            "max_attempts": self.max_attempts,
            "error_type": error_type,
        }
        detail = f": {_error_text(exc)}" if self._log_error_text else ""
        permanent = isinstance(exc, self.permanent)
        if permanent or attempt >= self.max_attempts:
            why = "permanent error" if permanent else f"failed {attempt} of {self.max_attempts} attempts"
            reason = f"handler {why}: {error_type}: {_error_text(exc)}"
            log.warning(
                "handler %s on %s %s, dead-lettering (%s%s)",
                why,
                message.stream,
                message.message_id,
                error_type,
                detail,
                extra=fields,
                exc_info=exc if self._log_error_text else None,
            )
            await reader.dead_letter(message, reason, error_type=error_type)
            return False
        emit(self.metrics, "retried", stream=message.stream, group=self.group, attempt=attempt)
        log.info(
            "handler failed on %s %s (attempt %d of %d, %s%s); retrying",
            message.stream,
            message.message_id,
            attempt,
            self.max_attempts,
            error_type,
            detail,
            extra=fields,
            exc_info=exc if self._log_error_text else None,
        )
        return True

    def _start_retention(self) -> asyncio.Task[None] | None:
        if not self.retention:
            return None
        retention = Retention(self._backend.client, self._config, metrics=self.metrics)
        return asyncio.get_running_loop().create_task(
            retention.run_periodically(self._backend.registry, self._config.retention_interval_ms / 1000)
        )


if TYPE_CHECKING:
    from abe.backends.message_queue.base.consumer import EventConsumer

    def _is_an_event_consumer(consumer: RedisConsumer) -> EventConsumer:
        return consumer  # mypy checks that RedisConsumer implements abe's protocol
