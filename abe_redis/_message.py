"""What ``consume()`` yields: the payload dict itself, carrying where it came from."""

from __future__ import annotations

from typing import Any


class ReceivedMessage(dict[str, Any]):
    """A consumed payload. It *is* the published dict (equal to it, JSON-serialisable) and also
    carries delivery metadata as attributes, so handlers that expect a plain dict keep working.

    ``stream`` and ``message_id`` locate the entry, ``group`` is the consumer group (``None`` in
    broadcast mode), ``delivery_count`` is how many times it has been delivered, this time included.
    """

    __slots__ = ("acked", "delivery_count", "group", "message_id", "stream")

    def __init__(
        self,
        payload: dict[str, Any],
        *,
        stream: str,
        message_id: str,
        group: str | None,
        delivery_count: int = 1,
    ) -> None:
        super().__init__(payload)
        self.stream = stream
        self.message_id = message_id
        self.group = group
        self.delivery_count = delivery_count
        self.acked = group is None

    @property
    def key(self) -> str:
        """The key it was published under (the stream name)."""
        return self.stream


_new_dict = dict.__new__
_fill_dict = dict.update


def received(
    payload: dict[str, Any], stream: str, message_id: str, group: str | None, delivery_count: int
) -> ReceivedMessage:
    """A :class:`ReceivedMessage`, built without the keyword-argument ``__init__`` (a third of
    the cost, and this runs for every message consumed)."""
    message: ReceivedMessage = _new_dict(ReceivedMessage)
    _fill_dict(message, payload)
    message.stream = stream
    message.message_id = message_id
    message.group = group
    message.delivery_count = delivery_count
    message.acked = group is None
    return message
