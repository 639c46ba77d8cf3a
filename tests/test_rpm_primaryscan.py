"""primary.xml indexed by copa's layout scan (copa/pkg/rpm/primaryscan.py: createrepo_c's layout, by regular
expressions; a package's row made later from its kept element) against the expat reader (copa/pkg/rpm/repomd.py
iter_rows, held to dnf and to ElementTree by tests/test_rpm_primary_reader.py).

The rule: where the scan answers, it answers as the reader does (the same packages in the same order, the same
provided capabilities, the same rows); where it does not (NotCanonical), the reader reads the document, and the
scan never answers for a document the reader refuses. Checked on real createrepo_c repositories (where the scan
must answer), on generated documents in the layout, and on those documents broken or rewritten at random.
"""

from __future__ import annotations

import dataclasses
import io
import json
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import copa.pkg.rpm.repomd as repomd
from copa.errors import IntegrityError
from copa.pkg.cache import Cache
from copa.pkg.fetch import make_fetcher
from copa.pkg.openpgp import Keyring
from copa.pkg.rpm import primaryscan
from copa.pkg.rpm.primaryscan import NotCanonical, canonical_packages
from copa.pkg.rpm.repomd import RepoIndex, element_rows, fetch_entry, fetch_repomd, iter_rows
from copa.pkg.rpm.repos import RpmRepository
from tests.support.rpmrepo import RepoServer, build_repo
from tests.support.rpmtools import rpm_spec

PROVIDES = 16  # a row's provides list (after the 16 fields before the relations)
Reading = list[tuple[str, list[str], list[Any]]]  # (name, provided capabilities, row) per package


def _by_reader(body: bytes) -> Reading | str:
    """The expat reader's packages, or its error."""
    try:
        rows = list(iter_rows(io.BytesIO(body), "primary"))
    except IntegrityError as e:
        return f"refused: {e}"
    return [(r[0], [e[0] for e in r[PROVIDES]] + r[15], r) for r in rows]


def _by_scan(body: bytes) -> Reading | None:
    """The scan's packages with each kept element read into its row, or None where it does not answer."""
    try:
        return [(p.name, list(p.capabilities), element_rows([p.element], "primary")[0])
                for p in canonical_packages(io.BytesIO(body))]
    except NotCanonical:
        return None


# --- real createrepo_c repositories ---------------------------------------------------------------------------------

SPECS = [
    rpm_spec("hello", "1.0", epoch=2, arch="x86_64", lines=(
        "Requires: bash >= 4.0", "Requires(pre): shadow", "Requires: /bin/sh", "Provides: hv = 1.0",
        "Provides: hello(a&b) = 1", "Conflicts: oldhello < 1.0", "Obsoletes: hello-old <= 0.9", "Recommends: extra",
        "Suggests: hello-doc", "Supplements: (hello-lang and langpacks)", "Enhances: bash",
        "Requires: (shadow or passwd)", "URL: http://example.org/?a=1&b=<2>", "Packager: Some One <one@example.org>",
        "Vendor: A & B"), files={"/usr/bin/hello": "1", "/etc/hello.conf": "c", "/usr/bin/h&llo<x>": "t"}),
    rpm_spec("bash", "5.1", "3.el9", lines=("Provides: /bin/sh",), files={"/usr/bin/bash": "b", "/bin/sh": "s"}),
    rpm_spec("a-b_c+d", "0.1~rc1", "1^2", lines=("Requires: bash < 6",)),
    rpm_spec("nothing", "1", lines=("Provides: nothing-else",)),
]
SPECS[1] = dataclasses.replace(SPECS[1], summary='quotes " and \' and ]]> and & and <tags>', license="GPL & MIT")

pytestmark = pytest.mark.skipif(shutil.which("createrepo_c") is None, reason="createrepo_c writes the repositories")


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = build_repo(tmp_path_factory.mktemp("primaryscan") / "repo", SPECS).root
    return root


def _primary_body(root: Path) -> bytes:
    fetcher = make_fetcher(None, 30.0, None)
    with RepoServer(root) as server:
        loaded = fetch_repomd(RpmRepository("t", "t", (server.url,)), fetcher, lambda _r: Keyring((), ""),
                              verify=False)
        entry = loaded.repomd.entries["primary"]
        with repomd.open_decompressed(fetch_entry(loaded, entry, fetcher), entry, "primary") as f:
            return f.read()


def test_createrepo_c_primaries_are_scanned_as_the_reader_reads_them(repo: Path) -> None:
    body = _primary_body(repo)
    assert b"&amp;" in body and b"&lt;" in body  # (the escapes are there to be read)
    scanned = _by_scan(body)
    assert scanned is not None  # the scan answers for createrepo_c's own output
    assert scanned == _by_reader(body)
    assert {n for n, _c, _r in scanned} == {s.name for s in SPECS}
    hello = next(caps for n, caps, _r in scanned if n == "hello")
    assert "hello(a&b)" in hello and "/usr/bin/h&llo<x>" in hello


def _records(rows: Path) -> list[str]:
    """The records of an index's rows file, each ended by a NUL."""
    *records, last = rows.read_text().split("\0")
    assert last == "" and records
    return records


def _index(loaded: Any, primary: Path, cache: Cache | None) -> RepoIndex:
    return RepoIndex(loaded, primary, None, cache).load()


def test_the_index_answers_as_the_readers_rows_do_and_reads_back_from_the_cache(
        repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Names, providers and packages from the scan (fresh, from the cache, without a cache) equal those the
    reader's rows give (the scan turned off)."""
    fetcher = make_fetcher(tmp_path / "cache", 30.0, None)
    with RepoServer(repo) as server:
        loaded = fetch_repomd(RpmRepository("t", "t", (server.url,)), fetcher, lambda _r: Keyring((), ""),
                              verify=False)
        primary = fetch_entry(loaded, loaded.repomd.entries["primary"], fetcher)
    scanned = _index(loaded, primary, Cache(tmp_path / "c1"))
    rows_file = scanned._rows
    assert rows_file is not None
    assert all(r.startswith('<package type="rpm">') for r in _records(rows_file))  # (the scan's elements)
    again = _index(loaded, primary, Cache(tmp_path / "c1"))  # from the cache
    bare = _index(loaded, primary, None)

    def refuse(_stream: Any, _what: str) -> Any:
        raise NotCanonical

    monkeypatch.setattr(repomd, "_canonical_source", refuse)
    read = _index(loaded, primary, Cache(tmp_path / "c2"))
    assert read._rows is not None
    assert all(len(json.loads(r)) > 2 for r in _records(read._rows))  # (the reader's rows)
    capabilities = {r.name for p in read for r in p.provides} | {f for p in read for f in p.files}
    assert len(capabilities) > 10
    for index in (scanned, again, bare):
        assert index.names() == read.names()
        assert sorted(index, key=lambda p: p.nevra) == sorted(read, key=lambda p: p.nevra)
        for cap in sorted(capabilities):
            assert index.providers(cap) == read.providers(cap), cap


# --- generated documents in the layout -------------------------------------------------------------------------------

KINDS = ("provides", "requires", "conflicts", "obsoletes", "suggests", "enhances", "recommends", "supplements")
# What an XML 1.0 document may carry literally in text (no C0 controls but tab and newline; CR is normalised)
_CHARS = st.characters(codec="utf-8", exclude_characters="\ufffe\uffff\r"
                       + "".join(chr(c) for c in range(0x20) if c not in (9, 10)))
_TEXT = st.text(_CHARS, max_size=12)
_VALUE = st.text(st.characters(codec="utf-8", exclude_characters="\ufffe\uffff\r\t\n"
                               + "".join(chr(c) for c in range(0x20))), max_size=10)
_WORD = st.text("abcxyz019._+-/()& <>\"'", min_size=1, max_size=10)
_WS = st.sampled_from(["", "\n", "\n  ", "\n    ", " ", "\t"])


def _esc(value: str, attribute: bool = False) -> str:
    value = value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return value.replace('"', "&quot;") if attribute else value


@st.composite
def _entry(draw: st.DrawFn) -> str:
    attrs = [f'name="{_esc(draw(st.one_of(_WORD, _VALUE)), True)}"']
    for a in ("flags", "epoch", "ver", "rel", "pre"):
        if draw(st.booleans()):
            value = draw(st.sampled_from(["1", "0", "true"])) if a == "pre" else draw(st.one_of(_WORD, _VALUE))
            attrs.append(f'{a}="{_esc(value, True)}"')
    return f"<rpm:entry {' '.join(attrs)}/>"


@st.composite
def _package(draw: st.DrawFn) -> str:
    ws = draw(_WS)
    text = st.one_of(_WORD, _TEXT)
    value = st.one_of(_WORD, _VALUE)
    ck_type, ck_len = draw(st.sampled_from([("sha256", 64), ("sha1", 40), ("sha512", 128), ("md5", 32), ("sha", 40)]))
    parts = [
        '<package type="rpm">',
        f"<name>{_esc(draw(_WORD.filter(str.strip)))}</name>",
        f"<arch>{_esc(draw(text))}</arch>",
        '<version epoch="{}" ver="{}" rel="{}"/>'.format(*(_esc(draw(value), True) for _ in range(3))),
        f'<checksum type="{ck_type}" pkgid="YES">{draw(st.text("0123456789abcdef", min_size=ck_len, max_size=ck_len))}'
        "</checksum>",
    ]
    for t in ("summary", "description", "packager", "url"):
        form = draw(st.sampled_from(["text", "empty", "absent"]))
        parts += [f"<{t}>{_esc(draw(_TEXT))}</{t}>"] if form == "text" else [f"<{t}/>"] if form == "empty" else []
    parts += ['<time file="{}" build="{}"/>'.format(*(_esc(draw(st.one_of(value, st.integers(0).map(str))), True)
                                                       for _ in range(2))),
              '<size package="{}" installed="{}" archive="{}"/>'.format(
                  *(draw(st.integers(0, 10**9)) for _ in range(3)))]
    base = draw(st.one_of(st.none(), value))
    href = _esc(draw(value), True)
    parts.append(f'<location href="{href}"/>' if base is None else f'<location xml:base="{_esc(base, True)}" '
                 f'href="{href}"/>')
    children = []
    for _ in range(draw(st.integers(0, 6))):
        which = draw(st.sampled_from(["simple", "header", "deps", "emptydeps", "file"]))
        if which == "simple":
            t = draw(st.sampled_from(["license", "vendor", "group", "buildhost", "sourcerpm"]))
            children.append(f"<rpm:{t}>{_esc(draw(text))}</rpm:{t}>" if draw(st.booleans()) else f"<rpm:{t}/>")
        elif which == "header":
            children.append('<rpm:header-range start="{}" end="{}"/>'.format(
                *(_esc(draw(st.one_of(value, st.integers(0).map(str))), True) for _ in range(2))))
        elif which in ("deps", "emptydeps"):
            kind = draw(st.sampled_from(KINDS))
            entries = draw(st.lists(_entry(), max_size=4))
            children.append(f"<rpm:{kind}/>" if which == "emptydeps" else
                            f"<rpm:{kind}>" + "".join(ws + e for e in entries) + ws + f"</rpm:{kind}>")
        else:
            kind = draw(st.sampled_from(["", ' type="dir"', ' type="ghost"']))
            children.append(f"<file{kind}>{_esc(draw(text))}</file>")
    parts.append("<format>" + "".join(ws + c for c in children) + ws + "</format>")
    parts.append("</package>")
    return ws.join(parts)


@st.composite
def _document(draw: st.DrawFn) -> str:
    packages = draw(st.lists(_package(), max_size=4))
    declaration = draw(st.sampled_from(['<?xml version="1.0" encoding="UTF-8"?>\n',
                                        '<?xml version="1.0" encoding="utf-8"?>', ""]))
    count = draw(st.sampled_from(["", f' packages="{len(packages)}"']))
    return (declaration + '<metadata xmlns="http://linux.duke.edu/metadata/common" '
            f'xmlns:rpm="http://linux.duke.edu/metadata/rpm"{count}>\n' + "\n".join(packages) + "\n</metadata>\n")


SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(_document())
def test_documents_in_the_layout_are_scanned_as_the_reader_reads_them(document: str) -> None:
    body = document.encode()
    reading = _by_reader(body)
    assert not isinstance(reading, str), reading  # (the generator writes only what the reader takes)
    scanned = _by_scan(body)
    assert scanned is not None  # (and only what the scan answers for)
    assert scanned == reading


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_document())
def test_an_index_gives_each_name_the_readers_packages_fresh_cached_and_without_a_cache(document: str) -> None:
    """The index's records (elements with any characters, placed by byte offsets when parsed and as the cache keeps
    them, or held in memory) read back as the reader's packages, name by name; the providers index names the
    packages that provide each capability, in the reader's order."""
    body = document.encode()
    reading = _by_reader(body)
    assert not isinstance(reading, str), reading
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "primary.xml"
        path.write_bytes(body)
        loaded = _loaded_for(path)
        expected: dict[str, list[Any]] = {}
        providers: dict[str, list[str]] = {}  # capability -> the names providing it, once each, in document order
        for name, caps, row in reading:
            expected.setdefault(name, []).append(repomd._row_package(row, loaded.repo.id, loaded.base_url))
            for cap in caps:
                if cap and name not in providers.setdefault(cap, []):
                    providers[cap].append(name)
        for cache in (Cache(Path(tmp) / "c"), Cache(Path(tmp) / "c"), None):
            index = RepoIndex(loaded, path, lambda _n: False, cache).load()
            assert index.names() == set(expected)
            assert {cap: index._provider_names(cap) for cap in providers} == providers
            assert index._providers.keys() == providers.keys()
            for name in sorted(expected, reverse=True):
                assert list(index.versions(name)) == expected[name], name


@pytest.mark.parametrize("extra", ["<rpm:provides/>", '<rpm:provides><rpm:entry name="other"/></rpm:provides>',
                                   "<rpm:provides></rpm:provides>"])
@pytest.mark.parametrize("before", [True, False])
def test_the_last_provides_list_counts_as_in_the_readers_row(extra: str, before: bool) -> None:
    listed = "    <rpm:provides>\n"
    at = SMALL.index(listed) if before else SMALL.index("</rpm:provides>") + len("</rpm:provides>")
    body = (SMALL[:at] + extra + SMALL[at:]).encode()
    reading = _by_reader(body)
    assert not isinstance(reading, str), reading
    assert _by_scan(body) == reading


@pytest.mark.parametrize("chunk", [1, 2, 3, 4, 5, 1 << 20])
def test_chunks_of_any_size_scan_alike_and_a_closing_cdata_mark_anywhere_is_refused(
        chunk: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """The document is checked as it is decoded, chunk by chunk: the same packages whatever the chunks, and "]]>"
    found across their edges too: in an attribute value (where XML allows it and the reader takes it) the scan
    leaves the document to the reader."""
    monkeypatch.setattr(primaryscan, "_CHUNK", chunk)
    body = SMALL.encode()
    assert _by_scan(body) == _by_reader(body)
    for pad in range(6):  # (the mark at every place against the chunks' edges)
        marked = SMALL.replace('href="h.rpm"', f'href="h{"x" * pad}]]>.rpm"').encode()
        assert not isinstance(_by_reader(marked), str)
        assert _by_scan(marked) is None, pad


def test_a_cached_providers_index_cut_short_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "primary.xml"
    path.write_text(SMALL)
    RepoIndex(_loaded_for(path), path, None, Cache(tmp_path / "c")).load()
    index = next((tmp_path / "c" / "derived").glob("*.provides"))
    assert repomd._read_providers(index)[1].keys() == {"h&i"}
    whole = index.read_bytes()
    for cut in (1, 2, len(whole) // 2, len(whole) - 1):
        index.write_bytes(whole[:cut])
        with pytest.raises(IntegrityError, match="remove copa's cache"):
            repomd._read_providers(index)


# What a broken or rewritten document may carry that the layout does not: markup, references, other quoting,
# characters XML forbids, pieces of the layout in the wrong place.
FRAGMENTS = ["<", ">", "&", "&amp;", "&#65;", "&#x41;", "&nosuch;", "<!-- c -->", "<![CDATA[x]]>", "]]>", "\r", "\r\n",
             "\x01", "\x00", "\ufeff", "\ufffe", "'", '"', "\t", "\n", " ", "</package>", '<package type="rpm">',
             "<name>x</name>", "<x/>", "<rpm:entry/>", '<rpm:entry name="z"/>', ' a="1"', ' xmlns:rpm="urn:x"',
             "</format>", "<?pi x?>", "é", "\U0001f600", "</metadata>", "<metadata>", "/"]


@st.composite
def _broken(draw: st.DrawFn) -> bytes:
    document = draw(_document())
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(0, len(document)))
        how = draw(st.sampled_from(["insert", "delete", "replace"]))
        piece = draw(st.sampled_from(FRAGMENTS))
        if how == "insert":
            document = document[:at] + piece + document[at:]
        elif how == "delete":
            document = document[:at] + document[at + draw(st.integers(1, 8)):]
        else:
            document = document[:at] + piece + document[at + len(piece):]
    body = document.encode()
    if draw(st.integers(0, 9)) == 0:  # now and then, bytes that are not UTF-8
        at = draw(st.integers(0, len(body)))
        body = body[:at] + draw(st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80"])) + body[at:]
    return body


@SETTINGS
@given(_broken())
def test_the_scan_answers_for_a_broken_document_only_as_the_reader_does(body: bytes) -> None:
    scanned = _by_scan(body)
    if scanned is not None:
        assert scanned == _by_reader(body)


REWRITES: dict[str, Callable[[str], str]] = {
    "a comment": lambda x: x.replace("<format>", "<format><!-- c -->", 1),
    "CDATA": lambda x: x.replace("<name>hello</name>", "<name><![CDATA[hello]]></name>"),
    "a character reference": lambda x: x.replace("<arch>x86_64</arch>", "<arch>x86&#95;64</arch>"),
    "single quotes": lambda x: x.replace('type="rpm"', "type='rpm'", 1),
    "CRLF": lambda x: x.replace("\n", "\r\n"),
    "another attribute order": lambda x: x.replace('flags="EQ" epoch="2"', 'epoch="2" flags="EQ"', 1),
    "another prefix": lambda x: x.replace("xmlns:rpm=", "xmlns:r=").replace("<rpm:", "<r:").replace("</rpm:", "</r:"),
    "a byte-order mark": lambda x: "\ufeff" + x,
    "a srpm package": lambda x: x.replace('<package type="rpm">', '<package type="src">', 1),
    "an upper-case checksum": lambda x: x.replace("pkgid=\"YES\">", "pkgid=\"YES\">AB", 1),
    "an unknown element": lambda x: x.replace("</format>", "<rpm:new/></format>", 1),
}


@pytest.mark.parametrize("rewrite", sorted(REWRITES))
def test_other_writers_layouts_are_left_to_the_reader_which_reads_them(
        rewrite: str, repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A document the reader takes but the scan does not answer for: the index reads it by the reader's rows,
    and gives what the reader gives."""
    body = REWRITES[rewrite](_primary_body(repo).decode()).encode()
    assert body != _primary_body(repo)
    assert _by_scan(body) is None
    reading = _by_reader(body)
    assert not isinstance(reading, str), reading
    path = tmp_path / "primary.xml"
    path.write_bytes(body)
    index = RepoIndex(_loaded_for(path), path, None, Cache(tmp_path / "cache")).load()
    assert index._rows is not None
    assert all(len(json.loads(r)) > 2 for r in _records(index._rows))
    assert index.names() == {n for n, _c, _r in reading}
    assert sorted(p.nevra for p in index) == sorted(
        repomd._row_package(r).nevra for _n, _c, r in reading)


def _loaded_for(path: Path) -> repomd.LoadedRepomd:
    """A repomd naming a primary on disk (its checksum unchecked here: the index reads the file it is given)."""
    entry = repomd.RepomdEntry("primary", path.name, repomd.Checksum("sha256", "0" * 64), None)
    return repomd.LoadedRepomd(RpmRepository("t", "t", ("http://127.0.0.1/",)), "http://127.0.0.1/",
                               repomd.Repomd("1", {"primary": entry}, "0" * 64), False)


SMALL = """<?xml version="1.0" encoding="UTF-8"?>
<metadata xmlns="http://linux.duke.edu/metadata/common" xmlns:rpm="http://linux.duke.edu/metadata/rpm" packages="1">
<package type="rpm">
  <name>h&amp;i</name>
  <arch>x86_64</arch>
  <version epoch="2" ver="1.0" rel="1"/>
  <checksum type="sha256" pkgid="YES">0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef</checksum>
  <summary>s &lt;x&gt;</summary>
  <url/>
  <time file="1" build="2"/>
  <size package="3" installed="4" archive="5"/>
  <location xml:base="http://m/?a&amp;b" href="h.rpm"/>
  <format>
    <rpm:sourcerpm>h.src.rpm</rpm:sourcerpm>
    <rpm:header-range start="6" end="7"/>
    <rpm:provides>
      <rpm:entry name="h&amp;i" flags="EQ" epoch="2" ver="1.0" rel="1"/>
      <rpm:entry name="cap"/>
    </rpm:provides>
    <rpm:requires>
      <rpm:entry name="/bin/sh" pre="1"/>
    </rpm:requires>
    <file>/usr/bin/h</file>
  </format>
</package>
</metadata>
"""
# One character or reference the layout leaves out, or that XML forbids where it lands.
INSERTS = ["]]>", "\x01", "&", "&nosuch;", "&#65;", "\t", "\n", "\ufffe", "<", "\r", "'", '"', ">", "<!---->", "é", "/"]


@pytest.mark.parametrize("insert", INSERTS, ids=ascii)
def test_every_single_insertion_is_scanned_as_read_or_left_to_the_reader(insert: str) -> None:
    """Each of INSERTS at every position of a small document in the layout: where the scan answers, the reader
    gives the same; where the reader refuses, the scan does not answer."""
    assert _by_scan(SMALL.encode()) == _by_reader(SMALL.encode()) != []
    answered = 0
    for at in range(len(SMALL) + 1):
        body = (SMALL[:at] + insert + SMALL[at:]).encode()
        scanned = _by_scan(body)
        if scanned is not None:
            answered += 1
            assert scanned == _by_reader(body), (at, SMALL[max(0, at - 20):at])
    assert answered > 0 or insert not in ("\n", "é", "/")  # (the layout takes these in some places)
