"""The client's exceptions. All are OSErrors (as requests' are), so code that guards a body read against a
dropped connection with `except OSError` keeps working whichever layer raised."""

from __future__ import annotations


class WebError(OSError):
    """A request that did not produce a usable response."""


class ConnectError(WebError):
    """The connection could not be made or was lost before the response started."""


class TlsError(ConnectError):
    """The TLS handshake (or a TLS alert after it) failed: a CA we do not trust, a refused client certificate,
    a plain-HTTP server spoken to over HTTPS."""


class TimedOut(WebError):
    """No byte arrived within the timeout."""


class ConnectTimedOut(ConnectError, TimedOut):
    """Connecting (TCP, proxy tunnel or TLS handshake) took longer than the timeout."""


class ReadTimedOut(TimedOut):
    """The server accepted the request but sent nothing for longer than the timeout."""


class BodyError(WebError):
    """The response body was cut short or malformed (a closed connection, a bad chunk)."""


class TooManyRedirects(WebError):
    """More redirects than the session allows: a loop, most likely."""


class InvalidURL(WebError):
    """A URL this client cannot request (scheme, host or characters)."""


class InvalidRequest(WebError):
    """A request this client will not send: a header value with a line break, or characters HTTP cannot carry
    (a token server's answer used as a header, for one)."""
