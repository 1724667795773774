"""Keep payload text out of error messages and logs.

redis-py rewrites the error of a failed pipeline command as ``Command # N (<the command, its
arguments cut at 100 characters>) of pipeline caused error: …``; for an ``XADD`` those arguments
are the payload. :func:`scrub_pipeline_error` keeps the command's name and drops its arguments.
"""

from __future__ import annotations

import re

_PREFIX = re.compile(r"^Command # (\d+) \((\S*)")
_MARKER = ") of pipeline caused error: "


def scrub_text(text: str) -> str:
    """``text`` without the arguments of a pipeline command redis-py put into it."""
    if not text.startswith("Command # ") or _MARKER not in text:
        return text
    head, _, rest = text.partition(_MARKER)
    match = _PREFIX.match(head)
    name = match.group(2) if match else "?"
    number = match.group(1) if match else "?"
    return f"Command # {number} ({name} …) of pipeline caused error: {rest}"


def scrub_pipeline_error[E: BaseException](exc: E) -> E:
    """Remove the command's arguments (payload text) from a pipeline error, in place."""
    if exc.args and isinstance(exc.args[0], str):
        exc.args = (scrub_text(exc.args[0]), *exc.args[1:])
    return exc
