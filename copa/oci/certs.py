"""TLS files for registries: the client certificate (--cert/--key) and the per-registry certs.d directories.

containers/image (skopeo, podman, buildah) and docker read a directory named after the registry's `host[:port]`
under `~/.config/containers/certs.d`, `/etc/containers/certs.d` or `/etc/docker/certs.d` (the first that exists):
`*.crt` files are CA certificates added to the system roots, each `NAME.cert` is a client certificate whose key is
`NAME.key`, and a `.cert` without its `.key` (or the reverse) is an error. copa reads the same directories the
same way, so a host already set up for skopeo or podman works unchanged.

Files are checked here, before any connection, so that a wrong path or a key that does not match its certificate
is one clear error instead of an OpenSSL message (or a password prompt) in the middle of a pull.
"""

from __future__ import annotations

import os
import re
import shutil
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from copa.errors import LocalIOError, UsageError
from copa.web.tls import default_ca_bundle


def default_cert_dirs() -> tuple[Path, ...]:
    """The directories holding one `host[:port]` directory per registry, in containers/image's order."""
    home = Path(os.path.expanduser("~")) / ".config" / "containers" / "certs.d"
    return (home, Path("/etc/containers/certs.d"), Path("/etc/docker/certs.d"))


@dataclass(frozen=True, slots=True)
class ClientPair:
    """A checked client certificate and its key (`key` None: the certificate file holds the key too)."""

    cert: Path
    key: Path | None

    def as_cert(self) -> str | tuple[str, str]:
        return str(self.cert) if self.key is None else (str(self.cert), str(self.key))


@dataclass(frozen=True, slots=True)
class HostTls:
    """What a registry's certs.d directory holds: extra CA files and the client pair to present."""

    directory: Path
    ca_files: tuple[Path, ...]
    client: ClientPair | None


def _read(path: Path, what: str, hint: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise LocalIOError(f"cannot read {what} {path} ({e.strerror or type(e).__name__}): {hint}") from None


def check_client_pair(cert: str | Path | None, key: str | Path | None, hint: str = "check --cert and --key"
                      ) -> ClientPair | None:
    """The pair a TLS client will present, refusing what OpenSSL could not load or that does not belong together.

    Unreadable files are LocalIOError; a file that is no PEM certificate or key, an encrypted key (OpenSSL
    would stop to prompt for its password) or a key of another certificate are UsageError."""
    if cert is None and key is None:
        return None
    # cryptography is imported only when a client certificate is given: ~80 ms at every start otherwise.
    from cryptography import x509
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization

    spki = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    if cert is None:
        raise UsageError(f"a client key ({key}) needs its certificate: pass --cert with --key")
    cert_path, key_path = Path(cert), Path(key) if key is not None else None
    cert_data = _read(cert_path, "client certificate", hint)
    key_data = _read(key_path, "client key", hint) if key_path is not None else cert_data
    try:
        certificate = x509.load_pem_x509_certificates(cert_data)[0]
    except ValueError:
        raise UsageError(f"{cert_path} holds no PEM certificate: pass the client certificate in PEM form") from None
    key_name = key_path or cert_path
    try:
        private = serialization.load_pem_private_key(key_data, None)
    except TypeError:
        raise UsageError(f"client key {key_name} is encrypted: decrypt it (openssl pkey -in KEY -out PLAIN)") from None
    except (ValueError, UnsupportedAlgorithm):
        if key_path is None:
            raise UsageError(f"{cert_path} holds no private key: pass the client key with --key") from None
        raise UsageError(f"{key_path} holds no PEM private key: pass the certificate's key in PEM form") from None
    if private.public_key().public_bytes(*spki) != certificate.public_key().public_bytes(*spki):
        raise UsageError(f"client key {key_name} does not belong to certificate {cert_path}: pass the matching key")
    # What the client hands to OpenSSL must load there as well (e.g. a key type this OpenSSL refuses).
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        context.load_cert_chain(cert_path, key_path, password="")
    except ssl.SSLError as e:
        raise UsageError(f"OpenSSL cannot use client certificate {cert_path} ({e.reason or e}): {hint}") from None
    return ClientPair(cert_path, key_path)


def host_cert_dir(host: str, bases: Sequence[Path]) -> Path | None:
    """The first `BASE/host[:port]` directory that exists; one unreadable for permissions is passed over, as
    containers/image does."""
    for base in bases:
        candidate = base / host
        try:
            if candidate.is_dir():
                return candidate
        except PermissionError:
            continue
    return None


def read_host_dir(directory: Path) -> HostTls:
    """The CA files and client pair of one certs.d directory, under containers/image's naming rules."""
    hint = f"fix the files in {directory}"
    try:
        names = sorted(entry.name for entry in directory.iterdir())
    except OSError as e:
        raise LocalIOError(f"cannot list certificate directory {directory} ({e.strerror}): {hint}") from None
    present = set(names)
    ca_files: list[Path] = []
    client: ClientPair | None = None
    for name in names:
        if name.endswith(".crt"):
            path = directory / name
            if path.exists():  # a dangling link is skipped, as containers/image skips it
                ca_files.append(path)
        elif name.endswith(".cert"):
            key = name[: -len(".cert")] + ".key"
            if key not in present:
                raise LocalIOError(
                    f"certificate directory {directory} has client certificate {name} without its key {key}: "
                    "add the key, or name a CA certificate *.crt"
                )
            pair = check_client_pair(directory / name, directory / key, hint)
            # TLS presents one certificate; containers/image's Go client picks the first too when several fit.
            client = client or pair
        elif name.endswith(".key"):
            cert = name[: -len(".key")] + ".cert"
            if cert not in present:
                raise LocalIOError(
                    f"certificate directory {directory} has client key {name} without its certificate {cert}: "
                    "add the certificate or remove the key"
                )
    return HostTls(directory, tuple(ca_files), client)


def _system_bundle() -> str:
    """OpenSSL's default CA file, for a Python without certifi."""
    paths = ssl.get_default_verify_paths()
    return paths.cafile or paths.openssl_cafile


_PEM_CERT = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.DOTALL)


def _directory_certificates(path: Path) -> bytes:
    """The certificates of a CA directory (an OpenSSL hashed directory such as /etc/ssl/certs, where
    REQUESTS_CA_BUNDLE may point), each once: such a directory holds every certificate as its own file, as hash
    links to those, and as one bundle file besides."""
    seen: dict[bytes, None] = {}
    for entry in sorted(path.iterdir()):
        hashed = len(entry.name) >= 10 and entry.name[8] == "." and entry.name[9:].isdigit()
        if (entry.suffix in (".pem", ".crt") or hashed) and entry.is_file():
            for block in _PEM_CERT.findall(entry.read_bytes()):
                seen.setdefault(block, None)
    return b"\n".join(seen) + b"\n"


def merged_bundle(base: str | None, extra: Sequence[Path], dest: Path) -> Path:
    """One CA file: `base` (--ca-bundle, else the default roots, copa.web.tls.default_ca_bundle) plus `extra`."""
    hint = "check --ca-bundle and the certs.d directory"
    first = Path(base or default_ca_bundle() or _system_bundle())
    try:
        with dest.open("wb") as out:
            if first.is_dir():
                out.write(_directory_certificates(first))
            else:
                with first.open("rb") as f:
                    shutil.copyfileobj(f, out)
                out.write(b"\n")
            for source in extra:
                with source.open("rb") as f:
                    shutil.copyfileobj(f, out)
                out.write(b"\n")
    except OSError as e:
        raise LocalIOError(f"cannot read CA certificates {e.filename} ({e.strerror}): {hint}") from None
    return dest


# TLS alerts a server sends when it wants a client certificate it did not get (TLS 1.3: certificate_required;
# Go's TLS 1.2 server: bad_certificate) or does not accept the one it got.
_WANTS_CERT = ("alert certificate required", "alert bad certificate")
_REFUSES_CERT = (*_WANTS_CERT, "alert unknown ca", "alert certificate unknown", "alert unsupported certificate",
                 "alert certificate expired", "alert certificate revoked", "alert access denied")


def _chain_text(e: BaseException) -> str:
    parts, seen = [], set()
    cur: BaseException | None = e
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        parts.append(str(cur))
        cur = cur.__cause__ or cur.__context__
    return " ".join(parts).lower().replace("_", " ")


def client_cert_refusal(e: BaseException, host: str, client: ClientPair | None) -> str | None:
    """The one-line message for a handshake the registry failed over the client certificate, else None."""
    text = _chain_text(e)
    if client is None and any(alert in text for alert in _WANTS_CERT):
        return (f"registry {host} refused the TLS handshake: it asks for a client certificate; pass --cert and "
                f"--key (or put NAME.cert and NAME.key in /etc/containers/certs.d/{host}/)")
    if client is not None:
        hint = "pass a certificate issued by a CA the registry trusts for clients"
        alert = next((a for a in _REFUSES_CERT if a in text), None)
        if alert is not None:
            return f"registry {host} refused client certificate {client.cert} ({alert.removeprefix('alert ')}): {hint}"
        # The server's alert and its closing the connection race with our last handshake write: OpenSSL may see
        # only the close. After a client certificate was sent that is its refusal more often than not.
        if "eof occurred in violation of protocol" in text or "unexpected eof" in text:
            return (f"registry {host} closed the TLS handshake after client certificate {client.cert} was sent: "
                    f"{hint}")
    return None
