"""Registry TLS with client certificates against a real docker-registry that demands one (http.tls.clientcas).

The registry listens on the machine's host name (127.0.0.0/8 and localhost are plain HTTP to copa, as to docker),
with a server certificate and a client CA made here. skopeo, given the same files through --cert-dir, is the
oracle: what it reads and writes must be what copa reads and writes, and where skopeo refuses, copa refuses.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import socket
import ssl
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from copa.errors import CopaError, LocalIOError, RegistryError, UsageError
from copa.oci.image import Bundle, manifest_blobs
from copa.oci.model import Manifest
from copa.oci.reference import Reference
from copa.oci.registry import RegistryClient, RegistryOptions, RegistrySource, push
from tests.support.registry import REGISTRY_BIN, free_port, require_tool

NO_DIRS: tuple[Path, ...] = ()  # the machine's own /etc/containers/certs.d must not leak into these tests


# -- certificates -----------------------------------------------------------------------------------


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _pem_key(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


@dataclass(frozen=True)
class Authority:
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    @classmethod
    def create(cls, cn: str) -> Authority:
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(_name(cn)).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        return cls(key, cert)

    def issue(self, cn: str, usage: x509.ObjectIdentifier, names: list[x509.GeneralName] | None = None,
              key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | None = None
              ) -> tuple[bytes, bytes]:
        """(certificate PEM, key PEM) of a leaf for `usage` (server or client auth)."""
        key = key or ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        builder = (
            x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(self.cert.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False)
        )
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        return cert.public_bytes(serialization.Encoding.PEM), _pem_key(key)

    @property
    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)


def tls_address() -> tuple[str, str]:
    """(host name, address) for the registry: a name copa does not treat as plain-HTTP local, that reaches us.

    Debian maps the machine's host name to 127.0.1.1 (or 127.0.0.1) in /etc/hosts; where it does not resolve
    (or is localhost), the address of the interface that routes outwards is used by its literal."""
    name = socket.gethostname()
    if name.split(".")[0] != "localhost":
        try:
            return name, socket.gethostbyname(name)
        except OSError:
            pass
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect(("192.0.2.1", 9))  # TEST-NET-1: a UDP connect sends nothing, it only picks the route
        address = str(s.getsockname()[0])
    return address, address


@dataclass(frozen=True)
class Pki:
    root: Path
    host: str  # NAME:PORT of the registry
    ca: Path  # the CA that signed the registry's and the client's certificates
    client_cert: Path
    client_key: Path
    rogue_cert: Path  # a client certificate from a CA the registry does not trust
    rogue_key: Path
    other_key: Path  # a key that belongs to no certificate here

    def cert_dir(self, name: str, files: dict[str, Path | bytes]) -> Path:
        """A skopeo --cert-dir style directory holding `files` (copied paths or contents)."""
        d = self.root / "dirs" / name
        d.mkdir(parents=True)
        for fname, content in files.items():
            (d / fname).write_bytes(content.read_bytes() if isinstance(content, Path) else content)
        return d


@dataclass
class TlsRegistry:
    pki: Pki
    process: subprocess.Popen[bytes]

    @property
    def host(self) -> str:
        return self.pki.host


def _wait_tls(pki: Pki, address: str, port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    context = ssl.create_default_context(cafile=str(pki.ca))
    context.load_cert_chain(pki.client_cert, pki.client_key)
    context.check_hostname = False
    deadline = time.monotonic() + 20
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"docker-registry exited: {log.read_text()[-2000:]}")
        try:
            with socket.create_connection((address, port), timeout=2) as raw, context.wrap_socket(raw) as tls:
                tls.sendall(b"GET /v2/ HTTP/1.0\r\n\r\n")
                if tls.recv(12).startswith(b"HTTP/1."):
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError("docker-registry did not answer over TLS within 20 s")
        time.sleep(0.05)


@pytest.fixture(scope="module")
def tls_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsRegistry]:
    require_tool("docker-registry", "docker-registry")
    root = tmp_path_factory.mktemp("tls-registry")
    name, address = tls_address()
    port = free_port()
    ca, rogue = Authority.create("copa test CA"), Authority.create("copa rogue CA")
    names: list[x509.GeneralName] = [x509.IPAddress(ipaddress.ip_address(address))]
    if name != address:
        names.insert(0, x509.DNSName(name))
    server_cert, server_key = ca.issue("registry", ExtendedKeyUsageOID.SERVER_AUTH, names)
    # An RSA client key: the registry's Go TLS and OpenSSL must agree on more than one key type.
    client_cert, client_key = ca.issue("copa client", ExtendedKeyUsageOID.CLIENT_AUTH,
                                       key=rsa.generate_private_key(public_exponent=65537, key_size=2048))
    rogue_cert, rogue_key = rogue.issue("rogue client", ExtendedKeyUsageOID.CLIENT_AUTH)
    files = {
        "ca.pem": ca.pem, "server.pem": server_cert, "server.key": server_key, "client.pem": client_cert,
        "client.key": client_key, "rogue.pem": rogue_cert, "rogue.key": rogue_key,
        "other.key": _pem_key(ec.generate_private_key(ec.SECP256R1())),
    }
    for fname, content in files.items():
        (root / fname).write_bytes(content)
    pki = Pki(root, f"{name}:{port}", root / "ca.pem", root / "client.pem", root / "client.key",
              root / "rogue.pem", root / "rogue.key", root / "other.key")
    config = {
        "version": 0.1,
        "log": {"level": "warn", "accesslog": {"disabled": True}},
        "storage": {"filesystem": {"rootdirectory": str(root / "data")}, "delete": {"enabled": True}},
        "http": {
            "addr": f"{address}:{port}",
            "secret": uuid.uuid4().hex,
            "tls": {"certificate": str(root / "server.pem"), "key": str(root / "server.key"),
                    "clientcas": [str(pki.ca)]},
        },
    }
    (root / "config.yml").write_text(json.dumps(config, indent=1))  # JSON is YAML
    log = root / "registry.log"
    with log.open("ab") as out:
        process = subprocess.Popen([REGISTRY_BIN, "serve", str(root / "config.yml")], stdout=out, stderr=out)
    try:
        _wait_tls(pki, address, port, process, log)
        yield TlsRegistry(pki, process)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# -- helpers ------------------------------------------------------------------------------------------

ROOT = Path(__file__).resolve().parents[1]


def skopeo(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["skopeo", *args], capture_output=True, text=True, timeout=120, check=False)


def skopeo_raw(ref: Reference, cert_dir: Path) -> bytes:
    proc = subprocess.run(["skopeo", "inspect", "--raw", "--cert-dir", str(cert_dir), f"docker://{ref}"],
                          capture_output=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def options(pki: Pki, **kw: object) -> RegistryOptions:
    base: dict[str, object] = {"ca_bundle": str(pki.ca), "client_cert": str(pki.client_cert),
                               "client_key": str(pki.client_key), "cert_dirs": NO_DIRS, "retries": 2,
                               "backoff": 0.05, "timeout": 20}
    base.update(kw)
    return RegistryOptions(**base)  # type: ignore[arg-type]


def read_all(client: RegistryClient, ref: Reference) -> bytes:
    """The root manifest's raw bytes, after reading every blob (each verified against its digest)."""
    source = RegistrySource(client, ref)
    root = source.root()
    assert isinstance(root, Manifest)
    for desc in manifest_blobs(root):
        with source.open_blob(desc) as f:
            while f.read(1 << 16):
                pass
    return root.raw


def fails_fast(client: RegistryClient, ref: Reference) -> CopaError:
    started = time.monotonic()
    with pytest.raises(CopaError) as e:
        RegistrySource(client, ref).root()
    assert time.monotonic() - started < 5, "a refused handshake must not be retried"
    assert "\n" not in str(e.value)
    return e.value


@pytest.fixture(scope="module")
def skopeo_dir(tls_registry: TlsRegistry) -> Path:
    """What skopeo reads with --cert-dir: the CA as *.crt, the client pair as NAME.cert + NAME.key."""
    p = tls_registry.pki
    return p.cert_dir("skopeo", {"ca.crt": p.ca, "client.cert": p.client_cert, "client.key": p.client_key})


@pytest.fixture(scope="module")
def source_image(tls_registry: TlsRegistry, skopeo_dir: Path, tiny_layout: Path) -> Reference:
    """The tiny image, pushed by the oracle (skopeo) through the client-certificate handshake."""
    ref = Reference.parse(f"{tls_registry.host}/src/app:t")
    proc = skopeo("copy", "--quiet", "--dest-cert-dir", str(skopeo_dir), f"oci:{tiny_layout}:t", f"docker://{ref}")
    assert proc.returncode == 0, proc.stderr
    return ref


# -- the handshake works --------------------------------------------------------------------------------


def test_pull_and_push_with_client_cert(tls_registry: TlsRegistry, source_image: Reference, skopeo_dir: Path,
                                        tmp_path: Path) -> None:
    target = Reference.parse(f"{tls_registry.host}/dst/{uuid.uuid4().hex[:8]}:p")
    with RegistryClient(options(tls_registry.pki)) as client:
        raw = read_all(client, source_image)
        assert raw == skopeo_raw(source_image, skopeo_dir)
        source = RegistrySource(client, source_image)
        root = source.root()
        assert isinstance(root, Manifest)
        # No cross-repository mount: every blob is uploaded over the client-authenticated connection.
        bundle = Bundle(root=root, primary=root, children=(), blobs=manifest_blobs(root),
                        open_blob=source.open_blob, mount_from=None)
        assert push(client, target, bundle) == root.digest
    assert skopeo_raw(target, skopeo_dir) == raw
    # skopeo reads back every pushed blob and checks its digest.
    proc = skopeo("copy", "--quiet", "--src-cert-dir", str(skopeo_dir), f"docker://{target}", f"oci:{tmp_path / 'o'}:x")
    assert proc.returncode == 0, proc.stderr


def test_certs_d_directory_like_skopeo(tls_registry: TlsRegistry, source_image: Reference, skopeo_dir: Path) -> None:
    """No flags: the registry's certs.d directory supplies the CA and the client pair, as it does to skopeo."""
    p = tls_registry.pki
    base = p.root / "certs.d"
    (base / tls_registry.host).mkdir(parents=True)
    for name in ("ca.crt", "client.cert", "client.key"):
        (base / tls_registry.host / name).write_bytes((skopeo_dir / name).read_bytes())
    opts = options(p, ca_bundle=None, client_cert=None, client_key=None, cert_dirs=(str(p.root / "none"), str(base)))
    with RegistryClient(opts) as client:
        assert read_all(client, source_image) == skopeo_raw(source_image, base / tls_registry.host)


# -- refusals --------------------------------------------------------------------------------------------


def test_without_client_cert_exit_4(tls_registry: TlsRegistry, source_image: Reference) -> None:
    p = tls_registry.pki
    ca_only = p.cert_dir("ca-only", {"ca.crt": p.ca})
    oracle = skopeo("inspect", "--raw", "--cert-dir", str(ca_only), f"docker://{source_image}")
    assert oracle.returncode != 0 and "bad certificate" in oracle.stderr, oracle.stderr
    with RegistryClient(options(p, client_cert=None, client_key=None)) as client:
        error = fails_fast(client, source_image)
    assert isinstance(error, RegistryError) and error.exit_code == 4
    assert str(error) == (
        f"registry {tls_registry.host} refused the TLS handshake: it asks for a client certificate; pass --cert and "
        f"--key (or put NAME.cert and NAME.key in /etc/containers/certs.d/{tls_registry.host}/)"
    )


def test_untrusted_client_cert_exit_4(tls_registry: TlsRegistry, source_image: Reference) -> None:
    p = tls_registry.pki
    rogue = p.cert_dir("rogue", {"ca.crt": p.ca, "rogue.cert": p.rogue_cert, "rogue.key": p.rogue_key})
    oracle = skopeo("inspect", "--raw", "--cert-dir", str(rogue), f"docker://{source_image}")
    assert oracle.returncode != 0 and "bad certificate" in oracle.stderr, oracle.stderr
    with RegistryClient(options(p, client_cert=str(p.rogue_cert), client_key=str(p.rogue_key))) as client:
        error = fails_fast(client, source_image)
    assert isinstance(error, RegistryError) and error.exit_code == 4
    # Whether OpenSSL reads the registry's alert or only its close is a race (both seen about half the time).
    assert str(error) in (
        f"registry {tls_registry.host} refused client certificate {p.rogue_cert} (bad certificate): "
        "pass a certificate issued by a CA the registry trusts for clients",
        f"registry {tls_registry.host} closed the TLS handshake after client certificate {p.rogue_cert} was sent: "
        "pass a certificate issued by a CA the registry trusts for clients",
    )


def test_bad_client_files(tls_registry: TlsRegistry, source_image: Reference) -> None:
    """Each is refused before any connection, one line, with its own exit code."""
    p = tls_registry.pki
    combined = p.root / "combined.pem"
    combined.write_bytes(p.client_cert.read_bytes() + p.client_key.read_bytes())
    encrypted = p.root / "encrypted.key"
    key = serialization.load_pem_private_key(p.client_key.read_bytes(), None)
    encrypted.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                            serialization.BestAvailableEncryption(b"pw")))
    cases: list[tuple[str | None, str | None, type[CopaError], str]] = [
        (str(p.root / "absent.pem"), str(p.client_key), LocalIOError,
         f"cannot read client certificate {p.root / 'absent.pem'} (No such file or directory): check --cert and --key"),
        (str(p.client_cert), str(p.other_key), UsageError,
         f"client key {p.other_key} does not belong to certificate {p.client_cert}: pass the matching key"),
        (None, str(p.client_key), UsageError,
         f"a client key ({p.client_key}) needs its certificate: pass --cert with --key"),
        (str(p.client_cert), None, UsageError,
         f"{p.client_cert} holds no private key: pass the client key with --key"),
        (str(p.client_key), str(p.client_key), UsageError,
         f"{p.client_key} holds no PEM certificate: pass the client certificate in PEM form"),
        (str(p.client_cert), str(p.ca), UsageError,
         f"{p.ca} holds no PEM private key: pass the certificate's key in PEM form"),
        (str(p.client_cert), str(encrypted), UsageError,
         f"client key {encrypted} is encrypted: decrypt it (openssl pkey -in KEY -out PLAIN)"),
    ]
    for cert, key_path, kind, message in cases:
        with pytest.raises(CopaError) as e:
            RegistryClient(options(p, client_cert=cert, client_key=key_path))
        assert type(e.value) is kind and str(e.value) == message, (cert, key_path, str(e.value))
    # One file holding both certificate and key is a valid --cert alone (curl's and requests' convention).
    with RegistryClient(options(p, client_cert=str(combined), client_key=None)) as client:
        assert read_all(client, source_image)
    # The oracle refuses the mismatched pair too.
    mismatch = p.cert_dir("mismatch", {"ca.crt": p.ca, "client.cert": p.client_cert, "client.key": p.other_key})
    oracle = skopeo("inspect", "--raw", "--cert-dir", str(mismatch), f"docker://{source_image}")
    assert oracle.returncode != 0 and "does not match" in oracle.stderr, oracle.stderr


@pytest.mark.parametrize("names", [("client.cert",), ("client.key",)])
def test_certs_d_half_pair(tls_registry: TlsRegistry, source_image: Reference, names: tuple[str, ...]) -> None:
    """A certs.d directory with a certificate and no key (or the reverse) is refused, as skopeo refuses it."""
    p = tls_registry.pki
    files: dict[str, Path | bytes] = {"ca.crt": p.ca}
    files.update({n: p.client_cert if n.endswith(".cert") else p.client_key for n in names})
    directory = p.cert_dir(f"half-{names[0]}/{tls_registry.host}", files)
    oracle = skopeo("inspect", "--raw", "--cert-dir", str(directory), f"docker://{source_image}")
    assert oracle.returncode != 0 and "missing" in oracle.stderr.lower(), oracle.stderr
    with RegistryClient(options(p, ca_bundle=None, client_cert=None, client_key=None,
                                cert_dirs=(str(directory.parent),))) as client:
        error = fails_fast(client, source_image)
    assert isinstance(error, LocalIOError) and error.exit_code == 8
    other = "client.key" if names[0] == "client.cert" else "client.cert"
    assert f"without its {'key' if other.endswith('key') else 'certificate'} {other}" in str(error)


# -- the command line --------------------------------------------------------------------------------------


def copa(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "copa", *args], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "COPA_DEBUG": ""}, timeout=120)


def test_cli_cacert_cert_key(tls_registry: TlsRegistry, source_image: Reference) -> None:
    """`copa patch` reads the image through the handshake: the tiny image has no OS, so with the certificate
    the run gets as far as detection (exit 6); without it the registry refuses (exit 4). One line each."""
    p = tls_registry.pki
    common = ("patch", "-i", str(source_image), "--dry-run", "--cacert", str(p.ca))
    without = copa(*common)
    assert without.returncode == 4, without.stderr
    assert without.stderr.strip().splitlines()[-1].startswith("copa: error: registry ")
    assert "pass --cert and --key" in without.stderr
    with_cert = copa(*common, "--cert", str(p.client_cert), "--key", str(p.client_key))
    assert with_cert.returncode == 6, with_cert.stderr
    assert "Traceback" not in with_cert.stderr
