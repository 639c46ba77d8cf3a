"""Proxies from the environment, as curl, requests and Go's net/http read them: `<scheme>_proxy` (lower case
first), then `all_proxy`; `no_proxy` names hosts (and their subdomains), host:port pairs, IP networks, or `*`.
Read per request, so a program that sets them after import is honoured."""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from copa.web.errors import InvalidURL


@dataclass(frozen=True, slots=True)
class Proxy:
    host: str
    port: int
    authorization: str | None  # the Proxy-Authorization value, when the proxy URL carries a login

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


def _env(name: str) -> str:
    # A CGI program gets request headers as HTTP_* variables: HTTP_PROXY there is the client's "Proxy:" header
    # (httpoxy), never a setting.
    if name == "http_proxy" and "REQUEST_METHOD" in os.environ:
        return os.environ.get(name, "").strip()
    return (os.environ.get(name) or os.environ.get(name.upper()) or "").strip()


def _bypassed(host: str, port: int, no_proxy: str) -> bool:
    host = host.lower().rstrip(".")
    try:
        address: ipaddress.IPv4Address | ipaddress.IPv6Address | None = ipaddress.ip_address(host)
    except ValueError:
        address = None
    for entry in (e.strip().lower() for e in no_proxy.split(",")):
        if not entry:
            continue
        if entry == "*":
            return True
        if address is not None and "/" in entry:
            try:
                if address in ipaddress.ip_network(entry, strict=False):
                    return True
            except ValueError:
                pass
            continue
        if entry.startswith("[") and "]:" in entry:  # [IPv6]:port
            name, _, entry_port = entry[1:].partition("]:")
        elif entry.count(":") == 1:  # host:port (an IPv6 address alone has more colons)
            name, _, entry_port = entry.rpartition(":")
        else:
            name, entry_port = "", ""
        if name and entry_port.isdigit():
            if int(entry_port) != port:
                continue
            entry = name
        entry = entry.strip("[]").lstrip(".").rstrip(".")
        if host == entry or host.endswith("." + entry):
            return True
    return False


def proxy_for(scheme: str, host: str, port: int) -> Proxy | None:
    """The HTTP proxy a request to scheme://host:port goes through, or None for a direct connection."""
    if _bypassed(host, port, _env("no_proxy")):
        return None
    text = _env(f"{scheme}_proxy") or _env("all_proxy")
    if not text:
        return None
    if "://" not in text:
        text = "http://" + text
    parts = urlsplit(text)
    if parts.scheme != "http":
        raise InvalidURL(f"proxy {parts.scheme}://{parts.hostname}: only http:// proxies are supported "
                         f"(set {scheme}_proxy to an http:// URL)")
    if not parts.hostname:
        raise InvalidURL(f"proxy setting {scheme}_proxy has no host; set it to http://HOST:PORT")
    authorization = None
    if parts.username is not None:
        from copa.web.session import basic_authorization  # here: the session module imports this one

        authorization = basic_authorization(unquote(parts.username), unquote(parts.password or ""))
    try:
        proxy_port = parts.port or 80
    except ValueError:
        raise InvalidURL(f"proxy setting {scheme}_proxy has an invalid port; set it to http://HOST:PORT") from None
    return Proxy(parts.hostname, proxy_port, authorization)
