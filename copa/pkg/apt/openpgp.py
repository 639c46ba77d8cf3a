"""OpenPGP verification of APT Release files (clearsigned InRelease, or Release + detached Release.gpg).

Like apt, a file is accepted when at least one signature in it verifies against a key of the trusted keyring;
other signatures (e.g. by keys we do not have, or expired ones) are ignored. Only the verified signed text is
ever returned, so nothing outside the signature can reach the Release parser.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pysequoia
from pysequoia.packet import PacketPile

from copa.errors import IntegrityError
from copa.oci.rootfs import resolve_path
from copa.pkg.apt.sources import AptSource
from copa.pkg.openpgp import Keyring
from copa.pkg.openpgp import first_line as _first_line

# The CLI owner may re-word this; it is appended to every signature failure.
KEYRING_HINT = (
    "pass --keyring FILE with the repository's signing key, or --allow-unsigned-repositories to skip the check"
)

_ARMOR_BEGIN = b"-----BEGIN PGP SIGNED MESSAGE-----"
_SIG_END = b"-----END PGP SIGNATURE-----"
_FPR_RE = re.compile(r"^(?:0x)?([0-9A-Fa-f]{16}|[0-9A-Fa-f]{40}|[0-9A-Fa-f]{64})!?$")
_DEFAULT_TRUSTED = ("etc/apt/trusted.gpg",)
_DEFAULT_TRUSTED_DIR = "etc/apt/trusted.gpg.d"


def _verify_with(keyring: Keyring, data: bytes, signature: Any | None) -> Any:
    certs = list(keyring.certs)

    def store(_key_ids: list[str]) -> list[Any]:
        # Sequoia picks the matching (sub)key itself; handing it the whole ring keeps multi-key rings simple.
        return certs

    if signature is None:
        return pysequoia.verify(bytes=data, store=store)
    return pysequoia.verify(bytes=data, store=store, signature=signature)


def verify_clearsigned(data: bytes, keyring: Keyring, what: str) -> bytes:
    """Verify an InRelease file; return the signed text (without the armor)."""
    body = data.strip()
    if not body.startswith(_ARMOR_BEGIN):
        raise IntegrityError(f"{what}: InRelease is not an OpenPGP clearsigned message; {KEYRING_HINT}")
    # Reject anything glued around the signed message: apt does too, and it rules out smuggling a second message.
    if body.count(_ARMOR_BEGIN) != 1 or not body.endswith(_SIG_END) or body.count(_SIG_END) != 1:
        raise IntegrityError(f"{what}: InRelease has content outside its signed message; the mirror is tampered")
    if not keyring.certs:
        raise IntegrityError(f"{what}: no trusted keys to check the signature with; {KEYRING_HINT}")
    try:
        result = _verify_with(keyring, body, None)
    except Exception as e:  # pysequoia reports every verification failure as a generic exception
        raise IntegrityError(
            f"{what}: InRelease signature does not verify with {keyring.description} ({_first_line(e)}); "
            f"{KEYRING_HINT}"
        ) from e
    text = result.bytes
    if not result.valid_sigs or text is None:
        raise IntegrityError(f"{what}: InRelease has no valid signature by {keyring.description}; {KEYRING_HINT}")
    return bytes(text)


def verify_detached(data: bytes, signature: bytes, keyring: Keyring, what: str) -> bytes:
    """Verify Release against Release.gpg (which may hold several signatures); return `data`."""
    if not keyring.certs:
        raise IntegrityError(f"{what}: no trusted keys to check the signature with; {KEYRING_HINT}")
    try:
        packets = [bytes(p) for p in PacketPile.from_bytes(signature) if str(p.tag).endswith("Signature")]
    except Exception as e:  # malformed signature data
        raise IntegrityError(
            f"{what}: Release.gpg is not an OpenPGP signature ({_first_line(e)}); {KEYRING_HINT}"
        ) from e
    if not packets:
        raise IntegrityError(f"{what}: Release.gpg holds no signatures; {KEYRING_HINT}")
    last: BaseException | None = None
    for packet in packets:
        try:
            result = _verify_with(keyring, data, pysequoia.Sig.from_bytes(packet))
        except Exception as e:  # this signature failed; another one may still verify
            last = e
            continue
        if result.valid_sigs:
            return data
    detail = _first_line(last) if last is not None else "no valid signature"
    raise IntegrityError(
        f"{what}: Release signature does not verify with {keyring.description} ({detail}); {KEYRING_HINT}"
    )


def resolve_in_root(root: Path, path: str) -> Path:
    """`path` as seen from inside `root`: absolute symlink targets are re-rooted instead of escaping to the host."""

    def link_of(rel: str) -> str | None:
        candidate = root / rel
        return str(candidate.readlink()) if candidate.is_symlink() else None

    return root / resolve_path(path, link_of)


def keyring_for_source(source: AptSource, root: Path | None = None) -> Keyring:
    """The keys apt would trust for `source` on the system rooted at `root` (host '/' when None).

    Signed-By entries may be keyring paths, inline armored keys, or fingerprints (which select keys from the other
    entries, or from the default trusted keyrings). Without Signed-By, apt trusts etc/apt/trusted.gpg{,.d}.
    """
    base = root if root is not None else Path("/")
    rings: list[Keyring] = []
    fingerprints: list[str] = []
    for entry in source.signed_by:
        if "BEGIN PGP PUBLIC KEY BLOCK" in entry:
            rings.append(Keyring.from_bytes(entry.encode(), f"inline key of {source.origin or source.description}"))
        elif _FPR_RE.match(entry):
            fingerprints.append(entry)
        else:
            rings.append(Keyring.from_file(resolve_in_root(base, entry)))
    if not rings:
        rings = default_keyrings(base)
    ring = Keyring.merge(rings)
    return ring.restricted_to(fingerprints) if fingerprints else ring


def default_keyrings(root: Path) -> list[Keyring]:
    rings = []
    for rel in _DEFAULT_TRUSTED:
        p = resolve_in_root(root, rel)
        if p.is_file():
            rings.append(Keyring.from_file(p))
    d = resolve_in_root(root, _DEFAULT_TRUSTED_DIR)
    if d.is_dir():
        for p in sorted(d.iterdir()):
            if p.suffix in (".gpg", ".asc"):
                rings.append(Keyring.from_file(resolve_in_root(root, f"{_DEFAULT_TRUSTED_DIR}/{p.name}")))
    return rings


def unverified_cleartext(data: bytes, what: str) -> bytes:
    """The text of a clearsigned message WITHOUT checking it: only for trusted=yes / insecure sources."""
    lines = data.strip().split(b"\n")
    if not lines or lines[0].rstrip() != _ARMOR_BEGIN:
        raise IntegrityError(f"{what}: InRelease is not an OpenPGP clearsigned message")
    try:
        start = lines.index(b"", 1) + 1  # armor headers (Hash: ...) end at the first empty line
        end = lines.index(b"-----BEGIN PGP SIGNATURE-----", start)
    except ValueError as e:
        raise IntegrityError(f"{what}: InRelease is a malformed clearsigned message") from e
    body = [line[2:] if line.startswith(b"- ") else line for line in lines[start:end]]
    return b"\n".join(body)
