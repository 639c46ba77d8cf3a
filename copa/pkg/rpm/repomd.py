"""rpm-md repository metadata: repomd.xml (optionally signed), primary and filelists, read into frozen records.

Order of trust: repomd.xml is verified against `repomd.xml.asc` with the repository's keys when repo_gpgcheck=1
(and against a metalink's hashes when it came through one); every file it lists is then fetched through the
checksum-addressed Fetcher under the checksum repomd names (sha256 directly; sha1/sha224/sha384/sha512 are
checked here and the file is filed under its sha256), decompressed as a stream (gz, xz, zst, bz2) no larger than
repomd's open-size, and parsed as a stream: each <package> element is turned into types and dropped.

All XML is read here and only here, with the same guards: a DOCTYPE (and so any entity declaration) is refused
before the parser sees it, so nothing is expanded or fetched; undefined entities are expat errors.
"""

from __future__ import annotations

import bz2
import codecs
import collections
import functools
import hashlib
import io
import itertools
import json
import logging
import lzma
import mmap
import re
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable, Iterator, Mapping, MutableMapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, cast
from urllib.parse import urljoin
from xml.parsers import expat

import pysequoia
import zstandard
from isal import igzip
from pysequoia.packet import PacketPile

from copa.errors import CopaError, IntegrityError, NotFoundError, RegistryError
from copa.pkg.cache import Cache
from copa.pkg.fetch import Fetcher, FetchItem
from copa.pkg.openpgp import Keyring
from copa.pkg.rpm import primaryscan
from copa.pkg.rpm.deps import EQUAL, GREATER, LESS, Dep
from copa.pkg.rpm.primaryscan import NotCanonical
from copa.pkg.rpm.repos import RpmRepository, expand, mirror_url

log = logging.getLogger(__name__)

REPOMD = "repodata/repomd.xml"
_HASHES = ("sha256", "sha512", "sha384", "sha224", "sha1", "md5")
_CHUNK = 1 << 20
_MAX_PROLOG = 64 << 10
_MAX_OPEN = 8 << 30  # decompressed size when repomd states none
_HEX = re.compile(r"[0-9a-f]+")  # (compiled once: every package of a primary has a checksum)
_FLAGS = {"EQ": EQUAL, "LT": LESS, "LE": LESS | EQUAL, "GT": GREATER, "GE": GREATER | EQUAL}
_KEY_HINT = "pass --keyring FILE with the repository's signing key, or --allow-unsigned-repositories"
# "unknown encoding", "not well-formed" and friends: everything expat reports
XMLError = ET.ParseError


# --------------------------------------------------------------------------------------------------------- types


@dataclass(frozen=True, slots=True)
class Checksum:
    type: str  # sha256, sha512, sha1, ... ("sha" is sha1, as createrepo wrote it once)
    value: str


@dataclass(frozen=True, slots=True)
class RepomdEntry:
    """One <data> of repomd.xml."""

    type: str  # primary, filelists, other, modules, updateinfo, group, ...
    href: str  # relative to the repository's base (or to `base`)
    checksum: Checksum
    size: int | None
    open_checksum: Checksum | None = None
    open_size: int | None = None
    base: str = ""  # xml:base of <location>, when the file lives elsewhere

    @property
    def compression(self) -> str:
        for ext in ("gz", "xz", "zst", "bz2"):
            if self.href.endswith("." + ext):
                return ext
        return ""


@dataclass(frozen=True, slots=True)
class Repomd:
    revision: str
    entries: Mapping[str, RepomdEntry]
    sha256: str  # of repomd.xml as fetched: what cached parses are keyed by


@dataclass(frozen=True, slots=True)
class Relation:
    """One <rpm:entry>: a capability, as primary.xml states it."""

    name: str
    flags: str = ""  # "", EQ, LT, LE, GT, GE
    epoch: str = ""
    ver: str = ""
    rel: str = ""
    pre: bool = False  # Requires(pre) / (post)...: needed while the package's scripts run

    @property
    def evr(self) -> str:
        if not self.ver:
            return ""
        epoch = f"{self.epoch}:" if self.epoch and self.epoch != "0" else ""
        return f"{epoch}{self.ver}-{self.rel}" if self.rel else f"{epoch}{self.ver}"

    @property
    def dep(self) -> Dep:
        return Dep(self.name, _FLAGS.get(self.flags, 0), self.evr) if self.flags else Dep(self.name)

    def __str__(self) -> str:
        return str(self.dep)


@dataclass(frozen=True, slots=True)
class RpmPackage:
    """One <package type="rpm"> of primary.xml."""

    name: str
    arch: str
    epoch: str
    version: str
    release: str
    checksum: Checksum  # of the .rpm file
    href: str  # location, relative to the repository base (or to `base`)
    base: str  # xml:base of <location>, "" when none
    size: int  # bytes of the .rpm
    installed_size: int
    time: int  # build time
    sourcerpm: str
    header_start: int
    header_end: int
    provides: tuple[Relation, ...] = ()
    requires: tuple[Relation, ...] = ()
    conflicts: tuple[Relation, ...] = ()
    obsoletes: tuple[Relation, ...] = ()
    recommends: tuple[Relation, ...] = ()
    suggests: tuple[Relation, ...] = ()
    supplements: tuple[Relation, ...] = ()
    enhances: tuple[Relation, ...] = ()
    files: tuple[str, ...] = ()  # primary's subset (/etc/*, */bin/*, /usr/lib/sendmail); filelists has all
    repo_id: str = ""
    repo_base: str = ""  # the base URL the metadata came from; `url` joins the location to it

    @property
    def evr(self) -> str:
        epoch = f"{self.epoch}:" if self.epoch and self.epoch != "0" else ""
        return f"{epoch}{self.version}-{self.release}"

    @property
    def nevra(self) -> str:
        return f"{self.name}-{self.evr}.{self.arch}"

    @property
    def url(self) -> str:
        base = self.base or self.repo_base
        return urljoin(base.rstrip("/") + "/", self.href)


# --------------------------------------------------------------------------------------------------- safe parsing


def _check_prolog(head: bytes, what: str) -> bool:
    """True once the prolog is known to hold no DOCTYPE; False if more bytes are needed. A DOCTYPE raises."""
    data = head.lstrip(b"\xef\xbb\xbf")
    pos = 0
    while True:
        while pos < len(data) and data[pos:pos + 1] in b" \t\r\n":
            pos += 1
        if pos >= len(data):
            return False
        rest = data[pos:]
        if rest.startswith(b"<?"):
            end = data.find(b"?>", pos)
            if end < 0:
                return False
            pos = end + 2
        elif rest.startswith(b"<!--"):
            end = data.find(b"-->", pos)
            if end < 0:
                return False
            pos = end + 3
        elif rest.startswith(b"<!") or (len(rest) < 9 and b"<!DOCTYPE".startswith(rest)):
            if len(rest) < 9:
                return False
            raise IntegrityError(f"{what}: the XML carries a DOCTYPE (entity declarations); refusing it")
        else:
            return True


def _document_chunks(stream: BinaryIO, what: str) -> Iterator[bytes]:
    """The document's bytes, chunk by chunk, from the point its prolog passed `_check_prolog` (no DOCTYPE); a
    document too short for the check to decide comes whole at the end, for the parser to judge; an empty one is an
    error."""
    head = b""
    checked = False
    while chunk := stream.read(_CHUNK):
        if not checked:
            head += chunk
            checked = _check_prolog(head, what)
            if not checked:
                if len(head) > _MAX_PROLOG:
                    raise IntegrityError(f"{what}: no XML root element in the first {_MAX_PROLOG} bytes")
                continue
            chunk, head = head, b""
        yield chunk
    if not checked:
        if not head.strip():
            raise IntegrityError(f"{what}: empty document")
        yield head


def iter_elements(stream: BinaryIO, what: str, *tags: str) -> Iterator[ET.Element]:
    """Each complete element named one of `tags` (local names), streamed; the caller reads it before asking for the next
    one, then it is emptied, so memory stays that of one element (plus an empty husk per element in the root)."""
    # Only "end" events: "start" ones would double the per-event cost, which is most of the parse time.
    parser: Any = ET.XMLPullParser(events=("end",))  # typeshed types its events too loosely
    wanted = frozenset(tags)
    suffixes = tuple("}" + t for t in tags)
    try:
        for chunk in _document_chunks(stream, what):
            parser.feed(chunk)
            for _event, element in parser.read_events():
                if element.tag in wanted or element.tag.endswith(suffixes):
                    yield element
                    element.clear()
        parser.close()
        for _event, element in parser.read_events():
            if element.tag in wanted or element.tag.endswith(suffixes):
                yield element
    except XMLError as e:
        raise IntegrityError(f"{what}: malformed XML ({e}); the repository metadata is corrupt") from None
    except (LookupError, ValueError) as e:  # the encoding the XML declaration names: unknown, or multi-byte (expat)
        raise IntegrityError(f"{what}: XML in an unsupported encoding ({e}); the repository metadata is corrupt"
                             ) from None


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _child(elem: ET.Element, name: str) -> ET.Element | None:
    for c in elem:
        if _local(c.tag) == name:
            return c
    return None


def _int(value: str | None, default: int = 0) -> int:
    try:
        return int(value) if value is not None else default
    except ValueError:
        return default


_XML_BASE = "{http://www.w3.org/XML/1998/namespace}base"


# ------------------------------------------------------------------------------------------------------ repomd.xml


def parse_repomd(data: bytes, what: str) -> Repomd:
    entries: dict[str, RepomdEntry] = {}
    revision = ""
    for elem in iter_elements(io.BytesIO(data), what, "data", "revision"):
        if _local(elem.tag) == "revision":
            revision = (elem.text or "").strip()
            continue
        kind = elem.get("type", "")
        location = _child(elem, "location")
        checksum = _child(elem, "checksum")
        if not kind or location is None or checksum is None or not location.get("href"):
            raise IntegrityError(f"{what}: a <data> entry lacks type, location or checksum")
        open_ck = _child(elem, "open-checksum")
        size = _child(elem, "size")
        open_size = _child(elem, "open-size")
        entries[kind] = RepomdEntry(
            type=kind,
            href=location.get("href", ""),
            checksum=_checksum(checksum, what),
            size=_int(size.text, -1) if size is not None else None,
            open_checksum=_checksum(open_ck, what) if open_ck is not None else None,
            open_size=_int(open_size.text, -1) if open_size is not None else None,
            base=location.get(_XML_BASE, "") or location.get("base", ""),
        )
    return Repomd(revision, entries, hashlib.sha256(data).hexdigest())


def _checksum(elem: ET.Element, what: str) -> Checksum:
    return _checksum_of(elem.get("type"), elem.text, what)


def _checksum_of(kind_attr: str | None, text: str | None, what: str) -> Checksum:
    kind = (kind_attr or "").lower()
    kind = "sha1" if kind == "sha" else kind
    value = (text or "").strip().lower()
    if kind not in _HASHES or not _HEX.fullmatch(value):
        raise IntegrityError(f"{what}: unsupported checksum {kind!r} {value[:20]!r}")
    return Checksum(kind, value)


def verify_repomd_signature(data: bytes, signature: bytes, keyring: Keyring, what: str) -> None:
    """repomd.xml against repomd.xml.asc: at least one signature must verify with one of the keys."""
    if not keyring.certs:
        raise IntegrityError(f"{what}: repo_gpgcheck is on but no key is known to check repomd.xml; {_KEY_HINT}")
    try:
        packets = [bytes(p) for p in PacketPile.from_bytes(signature) if str(p.tag).endswith("Signature")]
    except Exception as e:  # pysequoia: any parse failure
        raise IntegrityError(f"{what}: repomd.xml.asc is not an OpenPGP signature; {_KEY_HINT}") from e
    certs = list(keyring.certs)
    for packet in packets:
        try:
            result = pysequoia.verify(bytes=data, store=lambda _ids: certs, signature=pysequoia.Sig.from_bytes(packet))
        except Exception:  # this signature does not verify; another may
            continue
        if result.valid_sigs:
            return
    raise IntegrityError(f"{what}: repomd.xml's signature does not verify with {keyring.description}; {_KEY_HINT}")


# ----------------------------------------------------------------------------------------- mirrorlist and metalink


@dataclass(frozen=True, slots=True)
class Mirrors:
    """Where a repository's metadata can be fetched from, in order, and the repomd hashes a metalink vouches
    for (empty: none to check)."""

    urls: tuple[str, ...]
    repomd_hashes: tuple[Checksum, ...] = ()


def parse_metalink(data: bytes, what: str) -> Mirrors:
    """A metalink (MirrorManager's): the <file name="repomd.xml"> hashes (alternates included: a mirror may still
    serve the previous repomd) and its <url>s, which end in repodata/repomd.xml."""
    hashes: list[Checksum] = []
    urls: list[tuple[int, int, str]] = []
    for elem in iter_elements(io.BytesIO(data), what, "file"):
        if elem.get("name") != "repomd.xml":
            continue
        for node in elem.iter():
            tag = _local(node.tag)
            if tag == "hash" and (node.get("type") or "").lower() in _HASHES and node.text:
                hashes.append(Checksum(node.get("type", "").lower(), node.text.strip().lower()))
            elif tag == "url" and node.text:
                url = node.text.strip()
                if url.startswith(("http://", "https://")) and url.endswith(REPOMD):
                    # MirrorManager ranks by preference (higher first); document order breaks ties
                    urls.append((-_int(node.get("preference"), 0), len(urls), url[: -len(REPOMD)].rstrip("/")))
    if not urls:
        raise NotFoundError(f"{what}: the metalink lists no http(s) mirror of repomd.xml")
    return Mirrors(tuple(u for _, _, u in sorted(urls)), tuple(hashes))


def parse_mirrorlist(text: str, variables: Mapping[str, str]) -> tuple[str, ...]:
    """One URL per line, '#' comments; librepo expands the repository variables in them."""
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#") and line.startswith(("http://", "https://")):
            out.append(expand(line, variables).rstrip("/"))
    return tuple(out)


def resolve_mirrors(repo: RpmRepository, fetcher: Fetcher, variables: Mapping[str, str],
                    mirrors: Sequence[tuple[str, str]] = ()) -> Mirrors:
    """baseurls first (dnf prefers them), then the metalink's or the mirrorlist's mirrors. A mirrorlist whose
    document is a metalink is read as one (dnf does the same for e.g. `mirrorlist=...metalink?repo=...`)."""
    if repo.baseurls:
        return Mirrors(repo.baseurls)
    link = repo.metalink or repo.mirrorlist
    data = fetcher.get_bytes(link, f"{repo.description}: {'metalink' if repo.metalink else 'mirrorlist'}",
                             limit=4 << 20)
    if repo.metalink or data.lstrip().startswith(b"<"):
        found = parse_metalink(data, f"{repo.description}: metalink {link}")
    else:
        found = Mirrors(parse_mirrorlist(data.decode("utf-8", "replace"), variables))
    if not found.urls:
        raise NotFoundError(f"{repo.description}: {link} names no mirror; pass --repository URL")
    return Mirrors(tuple(mirror_url(u, mirrors) for u in found.urls), found.repomd_hashes)


# ------------------------------------------------------------------------------------------------------- fetching


@dataclass(frozen=True, slots=True)
class LoadedRepomd:
    repo: RpmRepository
    base_url: str  # the mirror that served repomd.xml
    repomd: Repomd
    signed: bool  # verified against repomd.xml.asc


def fetch_repomd(repo: RpmRepository, fetcher: Fetcher, keyring_for: Callable[[RpmRepository], Keyring],
                 variables: Mapping[str, str] = {}, mirrors: Sequence[tuple[str, str]] = (),
                 verify: bool = True, bodies: MutableMapping[str, bytes] | None = None) -> LoadedRepomd:
    """repomd.xml from the first mirror that serves it, checked against a metalink's hashes and, with
    repo_gpgcheck (and `verify`), against repomd.xml.asc. `bodies` (by URL): repomd.xml and repomd.xml.asc
    already downloaded (the prefetch's), used instead of asking the mirror again and checked just the same; what
    is downloaded here is added to it."""
    found = resolve_mirrors(repo, fetcher, variables, mirrors)
    what = repo.description
    last: CopaError | None = None
    mismatch: IntegrityError | None = None
    got = bodies if bodies is not None else {}
    for base in found.urls:
        try:
            data = _body(fetcher, got, f"{base}/{REPOMD}", f"{what}: repomd.xml", 16 << 20)
        except (NotFoundError, RegistryError) as e:  # dnf goes on to the next mirror too
            last = e
            continue
        if found.repomd_hashes and not any(hashlib.new(h.type, data).hexdigest() == h.value
                                           for h in found.repomd_hashes):
            mismatch = last = IntegrityError(f"{what}: repomd.xml from {base} matches none of the metalink's "
                                             "hashes; the mirror is stale or tampered")
            continue
        signed = False
        if repo.repo_gpgcheck and verify:
            try:
                signature = _body(fetcher, got, f"{base}/{REPOMD}.asc", f"{what}: repomd.xml.asc", 1 << 20)
            except NotFoundError:
                raise IntegrityError(f"{what}: repo_gpgcheck=1 but {base}/{REPOMD}.asc does not exist; "
                                     f"{_KEY_HINT}") from None
            verify_repomd_signature(data, signature, keyring_for(repo), f"{what}: {base}")
            signed = True
        return LoadedRepomd(repo, base, parse_repomd(data, f"{what}: repomd.xml"), signed)
    assert last is not None
    raise mismatch or last  # a mirror serving the wrong repomd says more than one that is down


def _body(fetcher: Fetcher, bodies: MutableMapping[str, bytes], url: str, what: str, limit: int) -> bytes:
    data = bodies.get(url)
    if data is None:
        data = bodies[url] = fetcher.get_bytes(url, what, limit=limit)
    return data


def signature_verifies(loaded: LoadedRepomd, fetcher: Fetcher, keyring: Keyring,
                       bodies: MutableMapping[str, bytes]) -> bool:
    """Whether the repomd.xml in `bodies` that `loaded` was read from has a repomd.xml.asc that verifies with
    `keyring` (the prefetch's question: may it read this repository's metadata before the plan does)."""
    url = f"{loaded.base_url}/{REPOMD}"
    data = bodies.get(url)
    if data is None or not keyring.certs:
        return False
    what = loaded.repo.description
    try:
        signature = _body(fetcher, bodies, url + ".asc", f"{what}: repomd.xml.asc", 1 << 20)
        verify_repomd_signature(data, signature, keyring, what)
    except (CopaError, OSError, ValueError) as e:
        log.debug("prefetch: %s", e)
        return False
    return True


def entry_url(loaded: LoadedRepomd, entry: RepomdEntry) -> str:
    base = entry.base or loaded.base_url
    return urljoin(base.rstrip("/") + "/", entry.href)


def fetch_entry(loaded: LoadedRepomd, entry: RepomdEntry, fetcher: Fetcher) -> Path:
    """The file of a repomd entry in the cache, verified against the checksum repomd names."""
    url = entry_url(loaded, entry)
    what = f"{loaded.repo.description}: {entry.type}"
    size = entry.size if entry.size is not None and entry.size >= 0 else None
    if entry.checksum.type == "sha256":
        return fetcher.fetch(FetchItem(url, entry.checksum.value, size, what))
    # The cache is addressed by sha256: remember which sha256 the other checksum's file has.
    alias = fetcher.cache.named(f"rpm-{entry.checksum.type}-{entry.checksum.value}")
    if alias.is_file():
        hit = fetcher.cache.lookup(alias.read_text().strip(), size)
        if hit is not None:
            return hit
    data = fetcher.get_bytes(url, what, limit=size if size is not None else 1 << 30)
    actual = hashlib.new(entry.checksum.type, data).hexdigest()
    if actual != entry.checksum.value or (size is not None and len(data) != size):
        raise IntegrityError(f"{what}: {entry.checksum.type} mismatch, expected {entry.checksum.value} but got "
                             f"{actual}; the repository or mirror serves corrupt or tampered content")
    sha256 = hashlib.sha256(data).hexdigest()
    path = fetcher.cache.store_stream(io.BytesIO(data), sha256, len(data), what)
    fetcher.cache.store_named(alias.name, sha256.encode())
    return path


class _Bounded(io.RawIOBase):
    """A decompressed stream that fails past `limit` bytes (a decompression bomb, or a lying open-size)."""

    def __init__(self, inner: BinaryIO, limit: int, what: str) -> None:
        self._inner = inner
        self._left = limit
        self._what = what

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        self._inner.close()
        super().close()

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        data = self._inner.read(min(len(buffer), self._left + 1))
        if len(data) > self._left:
            raise IntegrityError(f"{self._what}: decompresses to more than repomd's open-size; refusing it")
        self._left -= len(data)
        buffer[: len(data)] = data
        return len(data)


_MAGIC = ((b"\x1f\x8b", "gz"), (b"\xfd7zXZ\x00", "xz"), (b"\x28\xb5\x2f\xfd", "zst"), (b"BZh", "bz2"))


def open_decompressed(path: Path, entry: RepomdEntry, what: str) -> BinaryIO:
    """The file's decompressed bytes, streamed and bounded by the entry's open-size."""
    with path.open("rb") as f:
        magic = f.read(6)
    kind = next((k for m, k in _MAGIC if magic.startswith(m)), "")
    raw: BinaryIO
    if kind == "gz":
        raw = cast(BinaryIO, igzip.open(path, "rb"))  # type: ignore[no-untyped-call]
    elif kind == "xz":
        raw = cast(BinaryIO, lzma.open(path, "rb"))  # noqa: SIM115 (closed by the returned reader)
    elif kind == "bz2":
        raw = cast(BinaryIO, bz2.open(path, "rb"))  # noqa: SIM115 (closed by the returned reader)
    elif kind == "zst":
        raw = cast(BinaryIO, zstandard.ZstdDecompressor().stream_reader(path.open("rb"), closefd=True))
    else:
        raw = path.open("rb")
    limit = entry.open_size if entry.open_size is not None and entry.open_size >= 0 else _MAX_OPEN
    return cast(BinaryIO, io.BufferedReader(_Bounded(raw, limit, what), _CHUNK))


# ---------------------------------------------------------------------------------------------------- primary.xml


_DEP_KINDS = ("provides", "requires", "conflicts", "obsoletes", "recommends", "suggests", "supplements",
              "enhances")


_RPM_NS = "{http://linux.duke.edu/metadata/rpm}"
_COMMON_NS = "{http://linux.duke.edu/metadata/common}"
_DEP_TAGS = {_RPM_NS + k: i for i, k in enumerate(_DEP_KINDS)}


_RPM_URI = "http://linux.duke.edu/metadata/rpm"
# A dependency list's element as expat names it: in rpm's namespace, or in none (a primary written without namespaces).
_DEP_ELEMENTS = {name: i for i, k in enumerate(_DEP_KINDS) for name in (f"{_RPM_URI}}}{k}", k)}
_XML_BASE_ATTR = "http://www.w3.org/XML/1998/namespace}base"  # xml:base as expat names it
_TEXT_FIELDS = frozenset({"name", "arch", "checksum"})  # a <package>'s children whose text is read
_ATTR_FIELDS = frozenset({"version", "location", "size", "time"})  # ... and those whose attributes are

# What a frame on the reader's element stack is: (kind, package, detail)
_OTHER, _PACKAGE, _FIELD, _FORMAT, _DEPS, _FILE, _SOURCERPM = range(7)


@dataclass(slots=True)
class _Fields:
    """One open <package> element's direct children as the row needs them: the first child of each name (a second
    <name> or <format> is ignored), within the first <format> every dependency list (the last of a kind counts),
    every <file>, the last <sourcerpm> and <header-range>. Texts are an element's character data before its first
    child element, None when it has none (ElementTree's `text`)."""

    kind: str  # the type attribute ("rpm" unless said)
    texts: dict[str, str | None] = field(default_factory=dict)  # name, arch, checksum
    attrs: dict[str, dict[str, str]] = field(default_factory=dict)  # version, location, size, time, checksum
    format_seen: bool = False
    deps: list[list[list[Any]]] = field(default_factory=lambda: [[] for _ in _DEP_KINDS])
    files: list[str] = field(default_factory=list)
    sourcerpm: str = ""
    header: tuple[int, int] = (0, 0)


class _PrimaryReader:
    """expat handlers turning primary.xml's <package> elements into rows, with no element tree in between (the
    parse of a distribution's primary is most of a cold rpm patch's CPU). A <package> is any element of that local
    name, at any depth, and each row is what ElementTree's parse of it gave (tests/test_rpm_primary_reader.py
    compares the two).

    Two things keep the handlers' cost down. Character data is delivered only while the innermost open element is
    one whose text is read: the handler is set and unset as elements open and close, so the whitespace between the
    elements costs nothing. And inside a dependency list (most of primary's elements are its entries) the handlers
    are swapped for two that only append the entry and count its depth; anything unusual there (an element inside
    an entry, a <package> in the list) goes back to the general ones."""

    def __init__(self, what: str, want: Callable[[str], bool] | None) -> None:
        self.what = what
        self.want = want
        self.rows: list[list[Any]] = []  # finished rows, drained by the caller after each feed
        self.parser = expat.ParserCreate(None, "}")
        self.parser.buffer_text = True
        self.parser.StartElementHandler = self._start
        self.parser.EndElementHandler = self._end
        # Frames: [kind, package fields, detail, text]; text: the pieces of character data read for the element (up
        # to its first child element), None for an element whose text is not read.
        self._stack: list[list[Any]] = [[_OTHER, None, None, None]]
        self._entries: list[list[Any]] = []  # the open dependency list's entries (while its handlers are on)
        self._in_entry = False  # an entry of that list is open

    def _start(self, name: str, attrs: dict[str, str]) -> None:
        top = self._stack[-1]
        kind, pkg = top[0], top[1]
        if top[3] is not None:  # a child element ends the parent's text (what follows it is the child's tail)
            self.parser.CharacterDataHandler = None
        if kind == _DEPS:
            # A <package> directly in a list (an entry is read by _entry_start): an entry too, with the attributes
            # of an element already emptied (ElementTree's parse had yielded and cleared it before reading the list).
            top[2].append(["", "", "", "", "", False])
        local = name.rpartition("}")[2]
        if local == "package":
            self._stack.append([_PACKAGE, _Fields(attrs.get("type", "rpm")), None, None])
            return
        frame: list[Any] = [_OTHER, None, None, None]
        if kind == _PACKAGE:
            assert isinstance(pkg, _Fields)
            if local in _TEXT_FIELDS and local not in pkg.texts:
                pkg.texts[local] = None
                frame = [_FIELD, pkg, local, []]
                if local == "checksum":
                    pkg.attrs[local] = attrs
            elif local in _ATTR_FIELDS and local not in pkg.attrs:
                pkg.attrs[local] = attrs
            elif local == "format" and not pkg.format_seen:
                pkg.format_seen = True
                frame = [_FORMAT, pkg, None, None]
        elif kind == _FORMAT:
            assert isinstance(pkg, _Fields)
            dep = _DEP_ELEMENTS.get(name)
            if dep is not None:
                entries: list[list[Any]] = []
                pkg.deps[dep] = entries
                self._stack.append([_DEPS, pkg, entries, None])
                self._list_handlers(entries)
                return
            if local == "file":
                frame = [_FILE, pkg, None, []]
            elif local == "sourcerpm":
                frame = [_SOURCERPM, pkg, None, []]
            elif local == "header-range":
                pkg.header = (_int(attrs.get("start")), _int(attrs.get("end")))
        if frame[3] is not None:
            self.parser.CharacterDataHandler = frame[3].append
        self._stack.append(frame)

    def _end(self, _name: str) -> None:
        kind, pkg, detail, text = self._stack.pop()
        if text is not None:
            self.parser.CharacterDataHandler = None
            value = "".join(text) or None
            if kind == _FIELD:
                pkg.texts[detail] = value
            elif kind == _FILE:
                if value:
                    pkg.files.append(value)
            elif kind == _SOURCERPM:
                pkg.sourcerpm = value or ""
        elif kind == _PACKAGE:
            assert isinstance(pkg, _Fields)
            if pkg.kind == "rpm" and (self.want is None or self.want((pkg.texts.get("name") or "").strip())):
                self.rows.append(_element_row(pkg, self.what))
        top = self._stack[-1]
        if top[0] == _DEPS:  # back in a dependency list (after a <package> in it, or inside one of its entries)
            self._list_handlers(top[2])

    def _list_handlers(self, entries: list[list[Any]]) -> None:
        self._entries, self._in_entry = entries, False
        self.parser.StartElementHandler = self._entry_start
        self.parser.EndElementHandler = self._entry_end

    def _entry_start(self, name: str, attrs: dict[str, str]) -> None:
        if not self._in_entry and not name.endswith("}package") and name != "package":
            get = attrs.get
            self._entries.append([get("name", ""), get("flags", ""), get("epoch", ""), get("ver", ""), get("rel", ""),
                                  get("pre", "0") in ("1", "true")])
            self._in_entry = True
            return
        # An element inside an entry, or a <package> in the list: the general handlers take over, with the open
        # entry (if any) on the stack as an element whose contents are not read.
        self.parser.StartElementHandler = self._start
        self.parser.EndElementHandler = self._end
        if self._in_entry:
            self._stack.append([_OTHER, None, None, None])
        self._start(name, attrs)

    def _entry_end(self, name: str) -> None:
        if self._in_entry:
            self._in_entry = False
            return
        self.parser.StartElementHandler = self._start  # the list itself ends
        self.parser.EndElementHandler = self._end
        self._end(name)


def _element_row(pkg: _Fields, what: str) -> list[Any]:
    """A <package> element's fields as a row of plain values (what the parse cache stores as JSON for a document
    not in createrepo_c's layout): the one place primary's packages are made."""
    name, version = pkg.texts.get("name"), pkg.attrs.get("version")
    if not name or version is None:
        raise IntegrityError(f"{what}: a <package> without <name> or <version>")
    location, size, time = pkg.attrs.get("location"), pkg.attrs.get("size"), pkg.attrs.get("time")
    ck = (_checksum_of(pkg.attrs["checksum"].get("type"), pkg.texts["checksum"], what) if "checksum" in pkg.texts
          else Checksum("sha256", ""))
    return [
        name.strip(), (pkg.texts.get("arch") or "").strip(),
        version.get("epoch", "0") or "0", version.get("ver", ""), version.get("rel", ""), ck.type, ck.value,
        location.get("href", "") if location is not None else "",
        (location.get(_XML_BASE_ATTR, "") or location.get("base", "")) if location is not None else "",
        _int(size.get("package")) if size is not None else 0, _int(size.get("installed")) if size is not None else 0,
        _int(time.get("build")) if time is not None else 0, pkg.sourcerpm, pkg.header[0], pkg.header[1], pkg.files,
        *pkg.deps,
    ]


def iter_rows(stream: BinaryIO, what: str, want: Callable[[str], bool] | None = None) -> Iterator[list[Any]]:
    """primary.xml's rpm packages as rows (only those whose name `want` accepts, if given), streamed: the same
    guards as `iter_elements` (no DOCTYPE, so no entity declarations; undefined entities are expat errors)."""
    reader = _PrimaryReader(what, want)
    try:
        for chunk in _document_chunks(stream, what):
            reader.parser.Parse(chunk, False)
            yield from reader.rows
            reader.rows.clear()
        reader.parser.Parse(b"", True)
        yield from reader.rows
    except expat.ExpatError as e:
        raise IntegrityError(f"{what}: malformed XML ({e}); the repository metadata is corrupt") from None
    except (LookupError, ValueError) as e:  # the encoding the XML declaration names: unknown, or multi-byte
        raise IntegrityError(f"{what}: XML in an unsupported encoding ({e}); the repository metadata is corrupt"
                             ) from None


def _row_package(r: list[Any], repo_id: str = "", repo_base: str = "") -> RpmPackage:
    rel = [tuple(Relation(*e) for e in rels) for rels in r[16:]]
    return RpmPackage(
        name=r[0], arch=r[1], epoch=r[2], version=r[3], release=r[4], checksum=Checksum(r[5], r[6]), href=r[7],
        base=r[8], size=r[9], installed_size=r[10], time=r[11], sourcerpm=r[12], header_start=r[13],
        header_end=r[14], files=tuple(r[15]), provides=rel[0], requires=rel[1], conflicts=rel[2],
        obsoletes=rel[3], recommends=rel[4], suggests=rel[5], supplements=rel[6], enhances=rel[7],
        repo_id=repo_id, repo_base=repo_base,
    )


def iter_packages(stream: BinaryIO, what: str, want: Callable[[str], bool] | None = None) -> Iterator[RpmPackage]:
    """primary.xml's packages (only those whose name `want` accepts, if given), streamed."""
    for row in iter_rows(stream, what, want):
        yield _row_package(row)


def iter_filelists(stream: BinaryIO, what: str, want: Callable[[str], bool]) -> Iterator[tuple[str, str, str]]:
    """(pkgid, name, path) of filelists.xml's files that `want` accepts (a file dependency's path)."""
    for elem in iter_elements(stream, what, "package"):
        pkgid, name = elem.get("pkgid", ""), elem.get("name", "")
        for c in elem:
            if _local(c.tag) == "file" and c.text and want(c.text):
                yield pkgid, name, c.text


# -------------------------------------------------------------------------------------------------------- indexes


# 2: the providers index's values are NUL-joined names; 3: lines of [name, element] too; 4: records, each ended by
# a NUL: a row's JSON, or the text of a package element the layout scan kept (JSON-encoding those was a fifth of a
# distribution's scan, its quotes all escaped). Neither holds a NUL: JSON escapes control characters, and the scan
# refuses a document with one. 5: the providers index as _FIELD_END-ended fields, with each name's places.
_ROWS_VERSION = 5
_RECORD_END = "\0"
# Package names in the providers index are joined by NUL (which XML cannot carry, so no name holds one): a dict of
# str -> str is not tracked by the garbage collector, where one of lists (hundreds of thousands for a distribution's
# primary) made the collector's full passes most of the parse (20k packages: 9.7 s of CPU, 3.5 s without them).
_SEP = "\0"
# The cached providers index is keys and values, each ended by \x01 (which XML 1.0 cannot carry, not even as a
# reference, so no capability or name holds one), read back by splits into a dict: a JSON dump and load of it were
# 0.12 and 0.22 s for 20k packages (0.02 and 0.12 s so), the dump on a cold patch's critical path. Keys no
# capability can be: "" holds the names (NUL-joined, sorted), _PLACES each name's record offsets in the rows file in
# the same order (so that a warm run reads the records it wants without a pass over the whole rows file).
_FIELD_END = "\x01"
_PLACES = "\x02"
_COUNT = "\x03"  # how many capabilities follow (a file cut between fields would otherwise read as a shorter index)
_ROW_JSON = json.JSONEncoder(separators=(",", ":")).encode  # json.dumps(row, separators=...), one encoder


def _from_rows(records: Iterable[str], loaded: LoadedRepomd) -> list[RpmPackage]:
    """The packages of rows-file records: rows as they are; a canonical primary's elements by one parse of them
    together (a parser per element would cost more than the parse)."""
    rows: list[list[Any]] = []
    elements: list[str] = []
    for record in records:
        if record.startswith("<"):
            elements.append(record)
        else:
            rows.append(json.loads(record))
    if elements:
        rows += element_rows(elements, f"{loaded.repo.description}: primary")
    return [_row_package(r, loaded.repo.id, loaded.base_url) for r in rows]


def element_rows(elements: Sequence[str], what: str) -> list[list[Any]]:
    """The rows of <package> elements that `primaryscan` matched, by the expat reader, in the namespace context
    the layout gives them (so the same rows as the reader's over the whole document)."""
    document = f"{primaryscan.ROOT}{''.join(elements)}</metadata>".encode()
    rows = list(iter_rows(io.BytesIO(document), what))
    if len(rows) != len(elements):
        raise IntegrityError(f"{what}: {len(elements)} kept package elements read as {len(rows)} packages; "
                             "remove copa's cache (its derived/ directory) and run again")
    return rows


_PROVIDES_AT = _DEP_KINDS.index("provides") + 16  # a row's provides list


def _rows_source(stream: BinaryIO, what: str) -> Iterator[tuple[str, list[str], str]]:
    for row in iter_rows(stream, what):
        yield row[0], [e[0] for e in row[_PROVIDES_AT]] + row[15], _ROW_JSON(row)


def _canonical_source(stream: BinaryIO, _what: str) -> Iterator[tuple[str, tuple[str, ...], str]]:
    for p in primaryscan.canonical_packages(stream):
        yield p.name, p.capabilities, p.element


def _write_ended(out: BinaryIO, items: Iterable[str], end: str, batch: int) -> None:
    """Each item followed by `end`, UTF-8, `batch` items a write (the whole text at once would be a second copy of
    what is written, in memory, twice over once encoded)."""
    it = iter(items)
    while chunk := list(itertools.islice(it, batch)):
        out.write((end.join(chunk) + end).encode())


def _write_records(out: BinaryIO, records: Iterable[str]) -> None:
    _write_ended(out, records, _RECORD_END, 256)


def _providers_index(capabilities: list[str], owners: list[str]) -> dict[str, str]:
    """Each capability -> the names of the packages providing it, NUL-joined, each once, in document order; from
    every package's capabilities in order and the name each belongs to. Made by C loops (a dict of the pairs, a count)
    but for the capabilities provided more than once: a Python step per capability was a sixth of a
    distribution's scan."""
    index = dict(zip(capabilities, owners, strict=True))
    if len(index) < len(capabilities):  # (a capability listed twice, by one package or by several)
        shared = {c for c, n in collections.Counter(capabilities).items() if n > 1}
        joined: dict[str, list[str]] = {}
        for cap, owner in itertools.compress(zip(capabilities, owners, strict=True),
                                             map(shared.__contains__, capabilities)):
            names = joined.setdefault(cap, [])
            if owner not in names:
                names.append(owner)
        index.update((cap, _SEP.join(names)) for cap, names in joined.items())
    index.pop("", None)  # (no capability; "" is the names' key in the cached index)
    return index


def _write_providers(out: BinaryIO, providers: Mapping[str, str], where: Mapping[str, Sequence[int]]) -> None:
    ordered = sorted(where)
    places = _SEP.join(",".join(map(str, where[n])) for n in ordered)
    head = ["", _SEP.join(ordered), _PLACES, places, _COUNT, str(len(providers))]
    _write_ended(out, itertools.chain(head, itertools.chain.from_iterable(providers.items())), _FIELD_END, 8192)


def _fields(path: Path) -> Iterator[str]:
    """A cached providers index's fields, read a chunk at a time (a list of them all would cost more memory than
    the index they make)."""
    decoder = codecs.getincrementaldecoder("utf-8")("strict")
    rest = ""
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            parts = (rest + decoder.decode(chunk)).split(_FIELD_END)
            rest = parts.pop()
            yield from parts
    if rest or decoder.decode(b"", final=True):
        raise _cut_short(path)


def _cut_short(path: Path) -> IntegrityError:
    return IntegrityError(f"{path}: a cached providers index cut short; remove copa's cache (its derived/ directory) "
                          "and run again")


def _read_providers(path: Path) -> tuple[dict[str, str], dict[str, list[int]]]:
    """The providers index and each name's record offsets, from the cache."""
    fields = _fields(path)
    try:
        providers = dict(zip(fields, fields, strict=True))  # (an odd count is a ValueError)
    except (UnicodeDecodeError, ValueError):
        raise _cut_short(path) from None
    joined, places, count = providers.pop("", None), providers.pop(_PLACES, None), providers.pop(_COUNT, "")
    ordered = joined.split(_SEP) if joined else []
    offsets = places.split(_SEP) if places else []
    if joined is None or places is None or len(offsets) != len(ordered) or count != str(len(providers)):
        raise _cut_short(path)
    return providers, {n: [int(p) for p in o.split(",")] for n, o in zip(ordered, offsets, strict=True)}


@dataclass(frozen=True)
class ParsedPrimary:
    """What parsing one primary (by its checksum, `key`) leaves in memory: every package name, the providers index
    and where the records are. The prefetch hands it to the plan (ReadAhead.primaries), which would otherwise load
    the providers index back from the cache (~0.15 s for 20k packages); read-only once made."""

    key: str
    names: frozenset[str]
    providers: Mapping[str, str]  # capability or file -> NUL-joined package names
    rows: Path | None
    records: tuple[str, ...] | None
    where: Mapping[str, Sequence[int]]  # name -> its records' places (RepoIndex._where)


@dataclass
class RepoIndex:
    """One repository's packages by name.

    primary.xml is read (streamed) once per checksum into a cache file of one record per package (its element's
    text, or the expat reader's row as JSON), and an index of every capability and primary file to the names
    providing it, with each name's record offsets. A lookup reads the records of the names asked for, by those
    offsets, and decodes only those; with `keep`, only kept names are decoded at load time, and a later miss is one
    more read that also takes the providers of what the decoded packages require, which a resolver asks about
    next."""

    loaded: LoadedRepomd
    primary: Path  # the verified, compressed primary in the cache
    keep: Callable[[str], bool] | None = None
    cache: Cache | None = None
    passes: int = 0  # scans after the first (tests check misses are batched)
    _by_name: dict[str, list[RpmPackage]] = field(default_factory=dict)
    _names: set[str] = field(default_factory=set)
    _providers: dict[str, str] = field(default_factory=dict)  # capability or file -> NUL-joined package names
    _complete: set[str] = field(default_factory=set)
    _rows: Path | None = None
    _records: list[str] | None = None  # without a cache
    # name -> where its records are: byte offsets in the rows file, or indexes in _records (known once parsed)
    _where: Mapping[str, Sequence[int]] = field(default_factory=dict)
    _file_owners: dict[str, set[tuple[str, str]]] = field(default_factory=dict)  # path -> (name, pkgid)
    filelist_passes: int = 0
    # The same primary parsed by the prefetch; taken only when its key is this (verified) primary's checksum.
    parsed: Mapping[str, ParsedPrimary] = field(default_factory=dict)

    @property
    def repo(self) -> RpmRepository:
        return self.loaded.repo

    def _key(self) -> str:
        entry = self.loaded.repomd.entries["primary"]
        return f"rpm-primary-v{_ROWS_VERSION}-{entry.checksum.type}-{entry.checksum.value}"

    def parsed_primary(self) -> ParsedPrimary:
        """This index's parse, to be handed to another index of the same primary (after load or warm)."""
        return ParsedPrimary(self._key(), frozenset(self._names), self._providers, self._rows,
                             tuple(self._records) if self._records is not None else None, self._where)

    def _parse(self) -> None:
        """primary.xml -> rows (to the cache when there is one) and the providers index."""
        entry = self.loaded.repomd.entries["primary"]
        what = f"{self.repo.description}: primary"
        key = self._key()
        done = self.parsed.get(key)
        if done is not None:
            self._names, self._providers, self._rows = set(done.names), dict(done.providers), done.rows
            self._records = list(done.records) if done.records is not None else None
            self._where = done.where
            return
        if self.cache is not None:
            rows, index = self.cache.named(key + ".rows"), self.cache.named(key + ".provides")
            if rows.is_file() and index.is_file():
                self._rows = rows
                self._providers, self._where = _read_providers(index)
                self._names = set(self._where)
                return
        # createrepo_c's layout is indexed without making rows (a kept element is parsed when its package is asked
        # for); a document in any other layout, by the expat reader's rows. Records go to the cache as they come.
        cache = self.cache
        for source in (_canonical_source, _rows_source):
            self._names, self._providers = set(), {}  # (and _where: all three by _indexed_records)
            try:
                with open_decompressed(self.primary, entry, what) as stream:
                    records = self._indexed_records(source(stream, what), by_length=cache is not None)
                    if cache is None:
                        self._records = list(records)
                        return
                    self._rows = cache.write_named(key + ".rows",
                                                   functools.partial(_write_records, records=records))
                break
            except NotCanonical:
                log.debug("%s: not in createrepo_c's layout; read by the expat reader", what)
        if cache is not None:
            cache.write_named(key + ".provides",
                              functools.partial(_write_providers, providers=self._providers, where=self._where))

    def _indexed_records(self, packages: Iterable[tuple[str, Sequence[str], str]],
                         by_length: bool) -> Iterator[str]:
        """The rows file's records of (name, provided capabilities, record), with where each name's records are
        taken on the way (`by_length`: byte offsets in the file the records are written to, UTF-8 and one NUL after
        each; else indexes), and the names and the providers index once the last is read."""
        where: dict[str, list[int]] = {}
        self._where = where
        capabilities: list[str] = []
        owners: list[str] = []  # the package name of each capability
        position = 0
        for name, provided, record in packages:
            where.setdefault(name, []).append(position)
            # (isascii is a flag's test: only an element with other characters is encoded to be measured)
            position += ((len(record) if record.isascii() else len(record.encode())) + 1) if by_length else 1
            capabilities += provided
            owners += [name] * len(provided)
            yield record
        self._names = set(where)
        self._providers = _providers_index(capabilities, owners)

    def _provider_names(self, capability: str) -> list[str]:
        found = self._providers.get(capability)
        return found.split(_SEP) if found else []

    def _scan(self, want: Callable[[str], bool]) -> None:
        """Decode the packages whose names `want` accepts, from their records only."""
        places = sorted(p for name, ps in self._where.items() if want(name) for p in ps)  # (in the document's order)
        if self._rows is None:
            records = self._records or []
            self._take([records[i] for i in places])
            return
        if not places:
            return
        taken = []
        # (mapped: only the pages of the records read are read)
        with self._rows.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
            for place in places:
                end = mapped.find(b"\0", place)
                if end < 0:
                    raise IntegrityError("a cached primary index ends inside a record; remove copa's cache (its "
                                         "derived/ directory) and run again")
                taken.append(mapped[place:end].decode())
        self._take(taken)

    def _take(self, records: Iterable[str]) -> None:
        for pkg in _from_rows(records, self.loaded):
            self._by_name.setdefault(pkg.name, []).append(pkg)

    def warm(self) -> None:
        """Fill the parse cache only."""
        self._parse()

    def load(self) -> RepoIndex:
        self._parse()
        keep = self.keep
        self._complete = {n for n in self._names if keep is None or keep(n)}
        self._scan(self._complete.__contains__)
        return self

    def _fetch(self, names: Iterable[str]) -> None:
        wanted = {n for n in names if n in self._names and n not in self._complete}
        if not wanted:
            return
        for pkgs in list(self._by_name.values()):
            for pkg in pkgs:
                for rel in pkg.requires:
                    wanted.update(n for n in self._provider_names(rel.name) if n not in self._complete)
        self.passes += 1
        self._scan(wanted.__contains__)
        self._complete |= wanted

    def versions(self, name: str) -> tuple[RpmPackage, ...]:
        if name not in self._complete:
            self._fetch((name,))
        return tuple(self._by_name.get(name, ()))

    def providers(self, capability: str) -> tuple[RpmPackage, ...]:
        """Packages whose provides (or primary file list) name `capability`."""
        names = sorted(self._provider_names(capability))
        self._fetch(names)
        return tuple(p for n in names for p in self._by_name.get(n, ())
                     if any(r.name == capability for r in p.provides) or capability in p.files)

    def names(self) -> frozenset[str]:
        return frozenset(self._names)

    def __iter__(self) -> Iterator[RpmPackage]:
        self._fetch(self._names)
        for pkgs in self._by_name.values():
            yield from pkgs

    def filelist_providers(self, path: str, fetcher: Fetcher) -> tuple[RpmPackage, ...]:
        """Packages owning `path` by filelists.xml: for a file dependency primary's subset does not answer.
        filelists is large (every file of every package), so one pass answers `path` and every other file
        dependency of the packages read so far that primary does not answer, and answers are kept."""
        entry = self.loaded.repomd.entries.get("filelists")
        if entry is None:
            return ()
        if path not in self._file_owners:
            wanted = {path} | {r.name for pkgs in self._by_name.values() for p in pkgs for r in p.requires
                               if r.name.startswith("/") and r.name not in self._providers
                               and r.name not in self._file_owners}
            for w in wanted:
                self._file_owners[w] = set()
            what = f"{self.repo.description}: filelists"
            local = fetch_entry(self.loaded, entry, fetcher)
            self.filelist_passes += 1
            with open_decompressed(local, entry, what) as stream:
                for pkgid, name, file in iter_filelists(stream, what, wanted.__contains__):
                    self._file_owners[file].add((name, pkgid))
        owners = self._file_owners[path]
        self._fetch(n for n, _ in owners)
        # filelists names packages by pkgid (their checksum): only the versions that own the path
        return tuple(p for n in sorted({n for n, _ in owners}) for p in self._by_name.get(n, ())
                     if (n, p.checksum.value) in owners)


def load_repository(repo: RpmRepository, fetcher: Fetcher, keyring_for: Callable[[RpmRepository], Keyring], *,
                    variables: Mapping[str, str] = {}, mirrors: Sequence[tuple[str, str]] = (),
                    keep: Callable[[str], bool] | None = None, bodies: MutableMapping[str, bytes] | None = None,
                    parsed: Mapping[str, ParsedPrimary] = {}) -> RepoIndex:
    """repomd (verified as configured; `bodies` as for fetch_repomd), then primary (checksum-verified) indexed;
    `parsed`: primaries the prefetch parsed, by key (one is used only under the checksum the verified repomd
    names)."""
    loaded = fetch_repomd(repo, fetcher, keyring_for, variables, mirrors, bodies=bodies)
    entry = loaded.repomd.entries.get("primary")
    if entry is None:
        raise IntegrityError(f"{repo.description}: repomd.xml lists no primary metadata")
    primary = fetch_entry(loaded, entry, fetcher)
    return RepoIndex(loaded, primary, keep, fetcher.cache, parsed=parsed).load()


def prefetch_repository(repo: RpmRepository, fetcher: Fetcher, variables: Mapping[str, str],
                        mirrors: Sequence[tuple[str, str]], wanted: frozenset[str] = frozenset(),
                        keyring_for: Callable[[RpmRepository], Keyring] | None = None,
                        bodies: MutableMapping[str, bytes] | None = None) -> RepoIndex | None:
    """repomd.xml and primary into the cache (checked only against the repomd fetched here; repomd.xml and its
    signature kept in `bodies` for the plan), and primary parsed into the parse cache when the plan will trust
    this very repomd: a repository without repo_gpgcheck, or one whose repomd.xml.asc verifies with the keys
    `keyring_for` gives (those read so far). That parsed index is returned (with the `wanted` names decoded),
    None otherwise."""
    got = bodies if bodies is not None else {}
    loaded = fetch_repomd(repo, fetcher, lambda _r: Keyring((), ""), variables, mirrors, verify=False, bodies=got)
    entry = loaded.repomd.entries.get("primary")
    if entry is None:
        return None
    trusted = not repo.repo_gpgcheck
    if not trusted and keyring_for is not None:
        try:
            ring = keyring_for(repo)
        except (CopaError, OSError, ValueError) as e:  # (a key not in /etc, an http one): the plan fetches it
            log.debug("prefetch: %s", e)
        else:
            trusted = signature_verifies(loaded, fetcher, ring, got)
    primary = fetch_entry(loaded, entry, fetcher)
    if not trusted:
        return None
    # The plan trusts this very repomd (re-verified there, same checksums) as much as the prefetch does, so
    # primary's slow parse can happen here, overlapped with the layer scan. A repomd whose signature is not verified
    # yet is not even decompressed.
    index = RepoIndex(loaded, primary, wanted.__contains__, fetcher.cache)
    if not wanted:
        index.warm()  # (nothing to decode: no pass over the rows)
        return index
    return index.load()


def load_repositories(repos: Sequence[RpmRepository], fetcher: Fetcher,
                      keyring_for: Callable[[RpmRepository], Keyring], *, variables: Mapping[str, str] = {},
                      mirrors: Sequence[tuple[str, str]] = (), keep: Callable[[str], bool] | None = None
                      ) -> tuple[list[RepoIndex], list[str]]:
    """Every repository's index, loaded side by side (downloads overlap), in the given order. A repository that
    cannot be loaded (unreachable, or failing its checks) stops the run, unless it says skip_if_unavailable=1:
    then, as dnf does, it is left out with a warning (second value) and nothing of it is used."""
    if not repos:
        return [], []
    with ThreadPoolExecutor(max_workers=min(len(repos), fetcher.workers), thread_name_prefix="copa-rpm-md") as pool:
        futures = [pool.submit(load_repository, r, fetcher, keyring_for, variables=variables, mirrors=mirrors,
                               keep=keep) for r in repos]
    indexes: list[RepoIndex] = []
    warnings: list[str] = []
    for repo, future in zip(repos, futures, strict=True):
        try:
            indexes.append(future.result())
        except (RegistryError, IntegrityError) as e:
            if not repo.skip_if_unavailable:
                raise
            warnings.append(f"{repo.description} skipped (skip_if_unavailable=1): {e}")
            log.warning("%s", warnings[-1])
    return indexes, warnings
