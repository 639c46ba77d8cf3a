"""Which connection failures are retried: transient ones are, a TLS failure or an unknown host is not (it would
fail the same way every time, and each retry only delays the error the user needs to see)."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from copa.errors import RegistryError
from copa.net import describe_connection_error, is_permanent
from copa.oci.reference import Reference
from copa.oci.registry import RegistryClient
from copa.pkg.cache import Cache
from copa.pkg.fetch import Fetcher
from copa.web.errors import ConnectError, TlsError
from copa.web.session import Session

_ANSWER = b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


class PlainServer:
    """A TCP server on 127.0.0.1 that answers every connection with a plain HTTP 500, counting connections: a TLS
    client gets a handshake failure, a plain one a retryable status."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            with conn:
                conn.settimeout(2)
                try:
                    conn.recv(4096)
                    conn.sendall(_ANSWER)
                except OSError:
                    pass

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def server() -> Iterator[PlainServer]:
    s = PlainServer()
    yield s
    s.close()


def _fetcher(tmp: Path) -> Fetcher:
    return Fetcher(Cache(tmp), timeout=5, retries=3, backoff=0.01)


def test_tls_failure_is_not_retried(server: PlainServer, tmp_path: Path) -> None:
    with pytest.raises(RegistryError, match=r"TLS handshake failed.*--ca-bundle"):
        _fetcher(tmp_path).get_bytes(f"https://127.0.0.1:{server.port}/InRelease", "InRelease")
    assert server.connections == 1


def test_server_errors_are_retried(server: PlainServer, tmp_path: Path) -> None:
    # The same server spoken to in plain HTTP: its 500 is transient, so every attempt is made (the test above can
    # therefore tell one attempt from several).
    with pytest.raises(RegistryError, match="after 3 attempts"):
        _fetcher(tmp_path).get_bytes(f"http://127.0.0.1:{server.port}/InRelease", "InRelease")
    assert server.connections == 3


def test_classification_of_real_failures(server: PlainServer) -> None:
    with pytest.raises(TlsError) as tls:
        Session().get(f"https://127.0.0.1:{server.port}/", timeout=5)
    assert is_permanent(tls.value) and describe_connection_error(tls.value) == "TLS handshake failed"
    with pytest.raises(ConnectError) as nohost:
        # .invalid never resolves (RFC 2606), with or without a network.
        Session().get("http://copa-test.invalid/", timeout=5)
    assert is_permanent(nohost.value), nohost.value
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()
    with pytest.raises(ConnectError) as refused:
        Session().get(f"http://127.0.0.1:{port}/", timeout=5)
    assert not is_permanent(refused.value) and describe_connection_error(refused.value) == "connection refused"


def test_registry_client_does_not_retry_a_tls_failure(server: PlainServer) -> None:
    ref = Reference.parse(f"127.0.0.1:{server.port}/repo:tag")
    with pytest.raises(TlsError) as tls:
        Session().get(f"https://127.0.0.1:{server.port}/v2/", timeout=5)
    with RegistryClient() as client:
        err = client._connection_error(ref, tls.value)
    assert type(err) is RegistryError and "--ca-bundle" in str(err)
