"""Keep secrets out of logs, reprs and error messages."""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit

MASK = "***"
_QUERY_SECRET = re.compile(r"(?i)((?:^|[?&;])(?:password|pass|pwd|token|auth)=)[^&;#]*")


def redact_url(url: str) -> str:
    """Return ``url`` with the password (userinfo and query) replaced by ``***``.

    Malformed URLs are still redacted: anything between ``://`` and ``@`` that looks like
    ``user:secret`` loses the secret, because the point is that the secret never leaks, even
    from an error about the URL being wrong.
    """
    try:
        parts = urlsplit(url)
        netloc = parts.netloc
        if "@" in netloc:
            userinfo, _, hostinfo = netloc.rpartition("@")
            user, sep, _password = userinfo.partition(":")
            # Without a colon, redis-py reads ``redis://secret@host`` as a password-only URL.
            netloc = f"{user}:{MASK}@{hostinfo}" if sep else f"{MASK}@{hostinfo}"
        query = _QUERY_SECRET.sub(lambda m: m.group(1) + MASK, parts.query)
        if netloc == parts.netloc and query == parts.query:
            return url
        return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
    except ValueError:
        return re.sub(r"(://)[^@/]*@", r"\1" + MASK + "@", url)


_EMBEDDED_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+")


def redact_text(text: str, secrets: tuple[str | None, ...] = ()) -> str:
    """``text`` (an error message, a traceback) with the password of every URL in it masked,
    and every occurrence of each given secret replaced."""
    text = _EMBEDDED_URL.sub(lambda m: redact_url(m.group(0)), text)
    for secret in secrets:
        if secret:
            text = text.replace(secret, MASK)
    return text
