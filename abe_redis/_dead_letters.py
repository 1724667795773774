"""Moving an entry to its dead-letter stream, with the reason, and only then acknowledging it."""

from __future__ import annotations

import logging
import time
from typing import Any

from ._config import RedisConfig

log = logging.getLogger("abe_redis")

FIELD_PREFIX = b"field:"


async def dead_letter(
    client: Any,
    config: RedisConfig,
    *,
    stream: str,
    entry_id: str,
    fields: dict[Any, Any] | None,
    reason: str,
    group: str,
    consumer: str,
    delivery_count: int,
) -> None:
    """Copy the entry (every original field, byte for byte) to ``<stream><suffix>`` and ack it.

    The copy is written before the acknowledgement: a crash between the two leaves the entry
    pending (it is dead-lettered again, a duplicate in the dead-letter stream), never lost.
    """
    record: dict[bytes, Any] = {
        b"reason": reason,
        b"source_stream": stream,
        b"source_id": entry_id,
        b"group": group,
        b"consumer": consumer,
        b"delivery_count": str(delivery_count),
        b"dead_lettered_at_ms": str(int(time.time() * 1000)),
    }
    for name, value in (fields or {}).items():
        raw_name = name.encode() if isinstance(name, str) else name
        record[FIELD_PREFIX + raw_name] = value
    target = config.dead_letter_stream(stream)
    await client.xadd(target, record)
    await client.xack(stream, group, entry_id)
    log.warning(
        "dead-lettered %s %s (group %s, delivery %d) to %s: %s",
        stream,
        entry_id,
        group,
        delivery_count,
        target,
        reason,
    )
