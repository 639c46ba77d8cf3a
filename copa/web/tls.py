"""TLS contexts, one per (verify, client certificate) pair: building one loads a CA bundle (~10 ms), so they are
made once and shared by every connection with those settings."""

from __future__ import annotations

import functools
import os
import ssl
from pathlib import Path

# What a request passes as `verify`: True (the default bundle), False (no verification, --insecure over TLS) or
# the path of a CA bundle file or directory. `cert` is a PEM file holding both, or (certificate, key).
Verify = bool | str
Cert = str | tuple[str, str] | None


def default_ca_bundle() -> str | None:
    """The bundle `verify=True` means: REQUESTS_CA_BUNDLE or CURL_CA_BUNDLE when set (as with requests, which
    copa used before), else certifi's Mozilla bundle, else None (the system's default store)."""
    for name in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        value = os.environ.get(name)
        if value:
            return value
    try:
        import certifi
    except ImportError:
        return None
    return str(certifi.where())


@functools.lru_cache(maxsize=64)
def context(verify: Verify, cert: Cert) -> ssl.SSLContext:
    if verify is False:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    else:
        bundle = default_ca_bundle() if verify is True else verify
        if bundle is None:
            ctx = ssl.create_default_context()
        elif Path(bundle).is_dir():
            ctx = ssl.create_default_context(capath=bundle)
        else:
            ctx = ssl.create_default_context(cafile=bundle)
    if cert is not None:
        certfile, keyfile = (cert, None) if isinstance(cert, str) else cert
        ctx.load_cert_chain(certfile, keyfile)
        # A TLS 1.3 server may ask for the certificate after the handshake, for one path only (Apache's
        # SSLVerifyClient in a <Location>); without this it never gets one.
        if getattr(ctx, "post_handshake_auth", None) is not None:
            ctx.post_handshake_auth = True
    ctx.set_alpn_protocols(["http/1.1"])  # what this client speaks, for servers that also offer HTTP/2
    return ctx
