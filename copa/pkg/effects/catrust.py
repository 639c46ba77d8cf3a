"""RHEL's shared system CA store: what `update-ca-trust` (run by ca-certificates' %post and by anything that
changes /usr/share/pki/ca-trust-source or /etc/pki/ca-trust/source) regenerates under
/etc/pki/ca-trust/extracted. Reproduced: pem/tls-ca-bundle.pem, the bundle OpenSSL, curl and Python read through
/etc/pki/tls/certs/ca-bundle.crt, as `p11-kit extract --format=pem-bundle --filter=ca-anchors --overwrite
--comment --purpose server-auth` writes it. Not reproduced (named in the notes when they exist): the
openssl/ca-bundle.trust.crt, pem/email-ca-bundle.pem, pem/objsign-ca-bundle.pem, java/cacerts, edk2/cacerts.bin
and pem/directory-hash outputs.

Sources, as p11-kit's trust module loads them (paths /etc/pki/ca-trust/source then /usr/share/pki/ca-trust-source,
each: its own files, then anchors/, then blocklist/ (or the older blacklist/)): PEM or DER certificates (trusted in
anchors/, distrusted in blocklist/, neither in the base directory), and p11-kit persist files
(`[p11-kit-object-v1]` sections: label, trusted, x-distrusted, a PEM certificate; `class:
x-certificate-extension` objects staple an extendedKeyUsage (2.5.29.37) or OpenSSL reject list to every certificate
with that PEM PUBLIC KEY; a distrusting object may name its certificate by issuer and serial-number only).
Extracted: each trusted certificate, not distrusted (no distrusted object with its issuer and serial number or its
public key), that is an authority (basicConstraints cA, or a v1 self-signed one)
and whose purposes (the stapled extendedKeyUsage, else its own) allow serverAuth; the first copy of a certificate
only; each as `# LABEL` (the object's label, else the subject's CN, OU or O) then the PEM, entries separated by an
empty line, mode 0444. p11-kit reads a directory in readdir order, which depends on the file system the tool ran
on: copa takes the files of one directory in name order (one file per directory, or the single
ca-bundle.trust.p11-kit RHEL ships, gives the same bytes)."""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from copa.oci.layer import Entry
from copa.pkg.effects import scripts
from copa.pkg.effects.certificates import Result
from copa.pkg.effects.der import children, tlv
from copa.pkg.effects.merged import Merged
from copa.pkg.effects.model import Package

SOURCES = ("etc/pki/ca-trust/source", "usr/share/pki/ca-trust-source")
EXTRACTED = "etc/pki/ca-trust/extracted"
TLS_BUNDLE = f"{EXTRACTED}/pem/tls-ca-bundle.pem"
TOOL = "usr/bin/update-ca-trust"
NOT_REPRODUCED = ("openssl/ca-bundle.trust.crt", "pem/email-ca-bundle.pem", "pem/objsign-ca-bundle.pem",
                  "java/cacerts", "edk2/cacerts.bin", "pem/directory-hash")
# (ca-legacy, which the %post also runs, re-points /etc/pki/ca-trust/source/ca-bundle.legacy.crt: not reproduced)
COMMANDS = {"update-ca-trust", "/usr/bin/update-ca-trust", "/bin/update-ca-trust"}
_SERVER_AUTH = "1.3.6.1.5.5.7.3.1"
_OID_EKU = "2.5.29.37"
_OID_BASIC = "2.5.29.19"
_OID_REJECT = "1.3.6.1.4.1.3319.6.10.1"  # P11_OID_OPENSSL_REJECT
_PEM = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----(.*?)-----END \1-----", re.S)


# ---------------------------------------------------------------------------------------------------- DER

def _oid(raw: bytes) -> str:
    parts = [raw[0] // 40, raw[0] % 40] if raw[0] < 80 else [2, raw[0] - 80]
    value = 0
    for b in raw[1:]:
        value = (value << 7) | (b & 0x7F)
        if not b & 0x80:
            parts.append(value)
            value = 0
    return ".".join(map(str, parts))


@dataclass
class Cert:
    der: bytes
    version: int
    serial: bytes  # the INTEGER's DER (tag and length included), as CKA_SERIAL_NUMBER holds it
    issuer: bytes
    subject: bytes
    spki: bytes
    extensions: dict[str, bytes]  # OID -> extnValue contents


def parse_cert(der: bytes) -> Cert:
    _, s, e = tlv(der, 0)
    _, ts, te = children(der, s, e)[0]
    fields = children(der, ts, te)
    version = 1
    if fields and fields[0][0] == 0xA0:
        _, vs, ve = tlv(der, fields[0][1])
        version = int.from_bytes(der[vs:ve], "big") + 1
        fields = fields[1:]
    # serial, signature, issuer, validity, subject, subjectPublicKeyInfo, [1], [2], [3] extensions
    serial = der[_start(der, fields[0]):fields[0][2]]
    issuer = der[_start(der, fields[2]):fields[2][2]]
    subject = der[_start(der, fields[4]):fields[4][2]]
    spki = der[_start(der, fields[5]):fields[5][2]]
    extensions: dict[str, bytes] = {}
    for tag, xs, _ in fields[6:]:
        if tag != 0xA3:
            continue
        _, ls, le = tlv(der, xs)
        for _, es, ee in children(der, ls, le):
            parts = children(der, es, ee)
            oid = _oid(der[parts[0][1]:parts[0][2]])
            value = parts[-1]
            extensions[oid] = der[value[1]:value[2]]
    return Cert(der, version, serial, issuer, subject, spki, extensions)


def _start(der: bytes, field_: tuple[int, int, int]) -> int:
    """The offset of a child's tag byte from its content start (DER lengths are minimal: 1, or 1 + n bytes)."""
    _, s, e = field_
    length = e - s
    del der
    return s - (2 if length < 0x80 else 2 + (length.bit_length() + 7) // 8)


def _eku(value: bytes) -> list[str]:
    """extendedKeyUsage extnValue contents: SEQUENCE OF OID."""
    _, s, e = tlv(value, 0)
    return [_oid(value[cs:ce]) for tag, cs, ce in children(value, s, e) if tag == 0x06]


def _is_ca(value: bytes) -> bool:
    _, s, e = tlv(value, 0)
    parts = children(value, s, e)
    return bool(parts) and parts[0][0] == 0x01 and value[parts[0][1]:parts[0][2]] not in (b"", b"\x00")


_LABEL_OIDS = ("2.5.4.3", "2.5.4.11", "2.5.4.10")  # CN, OU, O
_STRINGS = {0x0C: "utf-8", 0x13: "latin-1", 0x14: "latin-1", 0x16: "latin-1", 0x1E: "utf-16-be", 0x1C: "utf-32-be"}


def subject_label(cert: Cert) -> str:
    """p11-kit's label for a certificate without one: the subject's CN, else OU, else O (the last one of the
    name, as p11_x509_lookup_dn_name finds it walking the RDNs)."""
    found: dict[str, str] = {}
    name = cert.subject
    _, s, e = tlv(name, 0)
    for _, rs, re_ in children(name, s, e):
        for _, as_, ae in children(name, rs, re_):
            parts = children(name, as_, ae)
            oid = _oid(name[parts[0][1]:parts[0][2]])
            tag, vs, ve = parts[1]
            if oid in _LABEL_OIDS and oid not in found:
                found[oid] = name[vs:ve].decode(_STRINGS.get(tag, "latin-1"), "replace")
    return next((found[o] for o in _LABEL_OIDS if o in found), "Unknown")


# ---------------------------------------------------------------------------------------------------- sources

@dataclass
class TrustObject:
    cert: Cert
    trusted: bool | None  # True anchor, False distrusted, None neither
    label: str | None


@dataclass
class Sources:
    objects: list[TrustObject] = field(default_factory=list)
    eku: dict[bytes, list[str]] = field(default_factory=dict)  # SPKI -> stapled purposes
    reject: dict[bytes, list[str]] = field(default_factory=dict)
    distrusted: set[tuple[bytes, bytes]] = field(default_factory=set)  # (issuer, serial) of distrusting objects
    notes: list[str] = field(default_factory=list)


def _unquote(value: str) -> str:
    value = value.strip()
    if value.startswith('"') and value.endswith('"'):
        value = value[1:-1]
    return re.sub(r"%([0-9A-Fa-f]{2})", lambda m: chr(int(m.group(1), 16)), value)


def _persist(text: bytes, where: str, trust: bool | None, out: Sources) -> None:
    """A p11-kit persist file's objects."""
    sections = re.split(rb"^\[p11-kit-object-v1\][ \t]*\r?$", text, flags=re.M)[1:]
    for section in sections:
        pem = _PEM.search(section)
        head = section[:pem.start()] if pem else section
        attrs: dict[str, str] = {}
        for line in head.decode("utf-8", "replace").splitlines():
            if ":" in line and not line.lstrip().startswith("#"):
                key, value = line.split(":", 1)
                attrs[key.strip()] = value.strip()
        if pem is None:
            if attrs.get("x-distrusted") == "true" and "issuer" in attrs and "serial-number" in attrs:
                # A distrust record naming a certificate by issuer and serial number (RHEL's bundle has them).
                out.distrusted.add((_unquote(attrs["issuer"]).encode("latin-1"),
                                    _unquote(attrs["serial-number"]).encode("latin-1")))
            else:
                out.notes.append(f"{where}: an object without PEM data (not read)")
            continue
        try:
            der = base64.b64decode(b"".join(pem.group(2).split()), validate=True)
        except binascii.Error:
            continue
        cls = attrs.get("class", "certificate" if pem.group(1) == b"CERTIFICATE" else "")
        if cls == "x-certificate-extension" and pem.group(1) == b"PUBLIC KEY":
            oid = attrs.get("object-id", "")
            raw = _unquote(attrs.get("value", "")).encode("latin-1")
            try:
                _, s, e = tlv(raw, 0)
                parts = children(raw, s, e)
                ext = raw[parts[-1][1]:parts[-1][2]]
                purposes = _eku(ext)
            except (ValueError, IndexError):
                continue
            if oid == _OID_EKU:
                out.eku[der] = purposes
            elif oid == _OID_REJECT:
                out.reject[der] = purposes
            continue
        if cls != "certificate" or pem.group(1) != b"CERTIFICATE":
            out.notes.append(f"{where}: a {cls or pem.group(1).decode()} object (not read)")
            continue
        try:
            cert = parse_cert(der)
        except (ValueError, IndexError):
            continue
        trusted = trust
        if attrs.get("x-distrusted") == "true":
            trusted = False
        elif attrs.get("trusted") == "true" and trusted is None:
            trusted = True
        label = _unquote(attrs["label"]) if "label" in attrs else None
        out.objects.append(TrustObject(cert, trusted, label))


def _load_file(data: bytes, where: str, trust: bool | None, out: Sources) -> None:
    if re.search(rb"^\[p11-kit-object-v1\]", data, re.M):
        _persist(data, where, trust, out)
        return
    blocks = list(_PEM.finditer(data))
    ders: list[bytes] = []
    if blocks:
        for m in blocks:
            if m.group(1) == b"TRUSTED CERTIFICATE":
                out.notes.append(f"{where}: BEGIN TRUSTED CERTIFICATE (OpenSSL trust flags) not read")
            elif m.group(1) in (b"CERTIFICATE", b"X509 CERTIFICATE"):
                try:
                    ders.append(base64.b64decode(b"".join(m.group(2).split()), validate=True))
                except binascii.Error:
                    continue
    elif data[:1] == b"\x30":
        ders.append(data)
    for der in ders:
        try:
            out.objects.append(TrustObject(parse_cert(der), trust, None))
        except (ValueError, IndexError):
            out.notes.append(f"{where}: a certificate copa cannot parse (left out)")


def _files(merged: Merged, directory: str) -> list[str]:
    if merged.target_kind(directory) != "dir":
        return []
    names = merged.listdir(directory)
    return [f"{directory}/{n}" for n in names if merged.target_kind(f"{directory}/{n}") in ("file", "hardlink")]


def load_sources(merged: Merged) -> Sources:
    out = Sources()
    for token in SOURCES:
        for sub, trust in (("", None), ("/anchors", True), ("/blocklist", False), ("/blacklist", False)):
            for path in _files(merged, token + sub):
                data = merged.read(path)
                if data is None:
                    out.notes.append(f"/{path} could not be read")
                    continue
                _load_file(data, "/" + path, trust, out)
    return out


# ---------------------------------------------------------------------------------------------------- extract

def _pem(der: bytes) -> str:
    b64 = base64.b64encode(der).decode()
    lines = [b64[i:i + 64] for i in range(0, len(b64), 64)]
    return "-----BEGIN CERTIFICATE-----\n" + "\n".join(lines) + "\n-----END CERTIFICATE-----\n"


def _authority(cert: Cert) -> bool:
    basic = cert.extensions.get(_OID_BASIC)
    if basic is not None:
        try:
            return _is_ca(basic)
        except (ValueError, IndexError):
            return False
    return cert.version == 1 and cert.subject == cert.issuer


def tls_bundle(sources: Sources, purpose: str = _SERVER_AUTH) -> bytes:
    """p11-kit's enumerate.c: a certificate matching a distrusted object's issuer and serial number, or its
    public key, is left out (blocklist_issuer_serial, blocklist_public_key)."""
    bad = [o.cert for o in sources.objects if o.trusted is False]
    by_name = sources.distrusted | {(c.issuer, c.serial) for c in bad}
    by_key = {c.spki for c in bad}
    seen: set[bytes] = set()
    blocks: list[str] = []
    for o in sources.objects:
        der = o.cert.der
        if o.trusted is not True or der in seen or not _authority(o.cert):
            continue
        if (o.cert.issuer, o.cert.serial) in by_name or o.cert.spki in by_key:
            continue
        purposes = sources.eku.get(o.cert.spki)
        if purposes is None and _OID_EKU in o.cert.extensions:
            try:
                purposes = _eku(o.cert.extensions[_OID_EKU])
            except (ValueError, IndexError):
                purposes = []
        if purposes is not None and purpose not in purposes:
            continue
        if purpose in sources.reject.get(o.cert.spki, []):
            continue
        seen.add(der)
        label = o.label if o.label is not None else subject_label(o.cert)
        blocks.append(f"# {label}\n" + _pem(der))
    return "\n".join(blocks).encode("utf-8")


def reproduce(merged: Merged, packages: Sequence[Package], mtime: int | None) -> dict[str, Result]:
    """update-ca-trust, when a package asks for it (a scriptlet naming it) or the layer changes a trust source."""
    asking = [p for p in packages if any(c.name in COMMANDS for body in p.scripts.values()
                                         for c in scripts.commands(body.decode("utf-8", "replace")))]
    touched = any(p.startswith(tuple(s + "/" for s in SOURCES)) for p in merged.layer_paths())
    if not asking and not touched:
        return {}
    who = (asking or list(packages[:1]))[0].name if (asking or packages) else ""
    if merged.kind(TLS_BUNDLE) not in ("file", "hardlink") and merged.target_kind(TOOL) is None:
        return {who: Result((), (), ("update-ca-trust: the image has neither the tool nor an extracted bundle "
                                     "(nothing regenerated)",))}
    if merged.target_kind(f"{EXTRACTED}/pem") != "dir":
        return {who: Result((), (), (f"update-ca-trust: /{EXTRACTED}/pem is missing (nothing regenerated)",))}
    sources = load_sources(merged)
    data = tls_bundle(sources)
    entries = []
    old = merged.read(TLS_BUNDLE)
    if old != data:
        entries.append(Entry.file(merged.resolve(TLS_BUNDLE, follow_last=False), data, 0o444, mtime=mtime))
    others = [o for o in NOT_REPRODUCED if merged.exists(f"{EXTRACTED}/{o}")]
    notes = list(dict.fromkeys(sources.notes))
    if others:
        notes.append("update-ca-trust: not regenerated (stale): " + ", ".join(f"/{EXTRACTED}/{o}" for o in others))
    return {who: Result(tuple(entries), ("update-ca-trust (pem/tls-ca-bundle.pem)",), tuple(notes))}
