"""What a failed connection means: shared by the registry client and the package fetcher.

Retries are for transient faults only. A TLS failure (wrong CA, a plain-HTTP server spoken to over HTTPS) or a
host name that does not exist fails the same way every time, so retrying it only delays the error the user needs.
"""

from __future__ import annotations

import re

from copa.web.errors import InvalidRequest, InvalidURL, TimedOut, TlsError

# getaddrinfo's EAI_NONAME texts (glibc, BSD/macOS). "Temporary failure in name resolution"
# (EAI_AGAIN) is not among them: a resolver that is down for a moment is worth another attempt.
_NO_SUCH_HOST = ("name or service not known", "nodename nor servname", "failed to resolve",
                 "no address associated with hostname")


def _chain(e: BaseException) -> str:
    """The text of an exception and what caused it: copa.web wraps the socket or TLS error."""
    parts = []
    seen: set[int] = set()
    cur: BaseException | None = e
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        parts.append(str(cur))
        cur = cur.__cause__ or cur.__context__
    return " ".join(parts).lower()


def is_permanent(e: BaseException) -> bool:
    """Whether a connection failure will happen again on retry: TLS errors and unknown host names."""
    if isinstance(e, (TlsError, InvalidURL, InvalidRequest)):  # a bad setting or request fails again the same way
        return True
    text = _chain(e)
    if "temporary failure in name resolution" in text:
        return False
    return any(s in text for s in _NO_SUCH_HOST)


def describe_connection_error(e: BaseException) -> str:
    """A few words for an error message: what went wrong with the connection."""
    text = _chain(e)
    if isinstance(e, (InvalidURL, InvalidRequest)):
        return str(e)
    if isinstance(e, TlsError):
        return "TLS handshake failed"
    if "refused" in text:
        return "connection refused"
    if any(s in text for s in _NO_SUCH_HOST):
        return "host name does not resolve"
    if isinstance(e, TimedOut) or "timed out" in text:
        return "timed out"
    if "reset" in text or "aborted" in text or "remote end closed" in text or "remotedisconnected" in text:
        return "connection dropped"
    return type(e).__name__


def redact(url: str) -> str:
    """A URL fit for a message: `user:pass@` removed (repository URLs may carry credentials, apt's and apk's
    syntax allow it), so no error or progress line ever shows a password."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    end = len(rest)
    for stop in "/?#":
        i = rest.find(stop)
        if 0 <= i < end:
            end = i
    netloc = rest[:end]
    if "@" not in netloc:
        return url
    return f"{scheme}://{netloc.rpartition('@')[2]}{rest[end:]}"


_USERINFO = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://)[^/\s@?#]*@")


def redact_text(text: str) -> str:
    """Text quoting the user's input (a sources line, a URL given on the command line) with every URL's
    `user:pass@` removed."""
    return _USERINFO.sub(r"\1", text)
