"""Whether the task that last asked a consumer for a message has died with it.

A consumer whose caller is gone must stop renewing its leases, so that peers claim its messages
after ``claim_idle_ms``; a live one renews them for as long as a handler runs. Only a task that
ended *abnormally* says the consumer is dead: cancelled (a worker stopped while the generator is
still referenced), or killed by an exception (its traceback keeps the generator alive). A task
that returned normally handed the message on — ``await asyncio.create_task(anext(stream))``,
a driver running each ``anext`` in its own task — and the message is still in hand: lapsing
then let a peer take it while it was being handled, and both handled it.
"""

from __future__ import annotations

import asyncio
from typing import Any


def caller_gone(task: asyncio.Task[Any] | None) -> bool:
    if task is None or not task.done():
        return False
    if task.cancelled():
        return True
    # Task.exception() would mark the caller's own error as retrieved and silence asyncio's
    # "Task exception was never retrieved" report of it; read the stored error instead.
    return getattr(task, "_exception", None) is not None
