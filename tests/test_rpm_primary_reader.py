"""primary.xml read by copa's expat reader (copa/pkg/rpm/repomd.py iter_rows), against two oracles.

libsolv (`dnf repoquery`) reads a createrepo_c primary rewritten the ways a valid XML document may be written
(comments, CDATA, character references, single quotes, CRLF line ends, other indentation): every package, its
relations, location and checksum must be what dnf reads. ElementTree, the stdlib's element-tree parser, reads
documents shaped in ways no repository writes but a hostile or broken one may (mixed content, repeated children,
packages nested in packages or in dependency lists, no namespaces, other namespaces): copa's rows must be those the
element walk over ElementTree's tree gives, the rule copa's primary parse followed before this reader; fed in any
chunk size.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import re
import shutil
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import copa.pkg.rpm.repomd as repomd
from copa.errors import IntegrityError
from copa.pkg.rpm.repomd import iter_packages, iter_rows
from tests.support.rpmrepo import RepoServer, build_repo, dnf_query
from tests.support.rpmtools import rpm_spec as Pkg

pytestmark = pytest.mark.skipif(shutil.which("createrepo_c") is None or shutil.which("dnf") is None,
                                reason="createrepo_c and dnf build and check the repositories")

PKGS = [
    Pkg("hello", "1.0", epoch=2, arch="x86_64", lines=(
        "Requires: bash >= 4.0", "Requires(pre): shadow", "Requires: /bin/sh", "Provides: hv = 1.0",
        "Conflicts: oldhello < 1.0", "Obsoletes: hello-old <= 0.9", "Recommends: extra", "Suggests: hello-doc",
        "Supplements: (hello-lang and langpacks)", "Enhances: bash", "Requires: (shadow or passwd)"),
        files={"/usr/bin/hello": "1", "/etc/hello.conf": "c"}),
    Pkg("bash", "5.1", "3.el9", lines=("Provides: /bin/sh",), files={"/usr/bin/bash": "b", "/bin/sh": "s"}),
    Pkg("a-b_c+d", "0.1~rc1", "1^2", lines=("Requires: bash < 6",)),
]
KINDS = ("provides", "requires", "conflicts", "obsoletes", "recommends", "suggests", "supplements", "enhances")


def _rewritten(xml: str) -> str:
    """The same document as another writer could put it: comments between and inside elements, names as CDATA,
    each 'e' of a text as a character reference, attributes in single quotes, CRLF line ends."""
    xml = re.sub(r"<name>([^<]*)</name>", r"<name><!-- n --><![CDATA[\1]]></name>", xml)
    xml = re.sub(r"<arch>([^<]*)</arch>", lambda m: "<arch>" + m.group(1).replace("6", "&#54;") + "</arch>", xml)
    xml = re.sub(r"<rpm:sourcerpm>([^<]*)</rpm:sourcerpm>",
                 lambda m: "<rpm:sourcerpm>" + m.group(1).replace("e", "&#x65;") + "</rpm:sourcerpm>", xml)
    xml = xml.replace("<format>", "<format><!-- the format -->\n      ")
    xml = re.sub(r'="([^"<>]*)"', r"='\1'", xml.split("\n", 1)[1])  # (the XML declaration keeps its quotes)
    return ('<?xml version="1.0" encoding="UTF-8"?>\n' + xml).replace("\n", "\r\n")


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, bytes, Path]]:
    """A createrepo_c repository whose primary is the rewritten one (repomd.xml names its new checksums)."""
    root = build_repo(tmp_path_factory.mktemp("primary-reader") / "repo", PKGS).root
    repomd_path = root / "repodata/repomd.xml"
    tree = ET.parse(repomd_path)
    ns = {"r": "http://linux.duke.edu/metadata/repo"}
    data = next(d for d in tree.getroot().findall("r:data", ns) if d.get("type") == "primary")
    location = data.find("r:location", ns)
    assert location is not None
    xml = _rewritten(gzip.decompress((root / location.get("href", "")).read_bytes()).decode())
    body = xml.encode()
    packed = gzip.compress(body)
    (root / "repodata/rewritten-primary.xml.gz").write_bytes(packed)
    location.set("href", "repodata/rewritten-primary.xml.gz")
    for tag, value in (("checksum", hashlib.sha256(packed).hexdigest()), ("size", str(len(packed))),
                       ("open-checksum", hashlib.sha256(body).hexdigest()), ("open-size", str(len(body)))):
        element = data.find(f"r:{tag}", ns)
        assert element is not None
        element.text = value
        if tag.endswith("checksum"):
            element.set("type", "sha256")
    ET.register_namespace("", ns["r"])
    ET.register_namespace("rpm", "http://linux.duke.edu/metadata/rpm")
    tree.write(repomd_path, xml_declaration=True, encoding="UTF-8")
    with RepoServer(root) as server:
        yield server.url, body, tmp_path_factory.mktemp("primary-reader-dnf")


def test_a_rewritten_primary_reads_as_dnf_reads_it(served: tuple[str, bytes, Path],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    url, body, work = served
    assert b"<![CDATA[" in body and b"&#x65;" in body and b"\r\n" in body  # (the rewrite did happen)
    qf = ("@@%{name} %{epoch} %{version} %{release} %{arch} %{location} %{sourcerpm}\n"
          + "".join(f"##{k}\n%{{{k}}}\n" for k in KINDS))
    theirs: dict[str, dict[str, list[str]]] = {}
    current: list[str] = []
    for line in dnf_query(url, work, "--qf", qf):
        if line.startswith("@@"):
            head = line[2:]
            theirs[head] = {k: [] for k in KINDS}
        elif line.startswith("##"):
            current = theirs[head][line[2:]]
        else:
            current.append(line)
    assert len(theirs) == len(PKGS)
    for chunk in (1 << 20, 5):  # one feed, and a feed every few bytes (a boundary inside every token)
        monkeypatch.setattr(repomd, "_CHUNK", chunk)
        ours = {}
        for p in iter_packages(io.BytesIO(body), "primary"):
            ours[f"{p.name} {p.epoch} {p.version} {p.release} {p.arch} {p.href} {p.sourcerpm}"] = {
                k: sorted({str(r) for r in getattr(p, k)}) for k in KINDS}
            assert len(p.checksum.value) == 64 and p.size > 0 and p.header_end > p.header_start > 0
        assert ours == {head: {k: sorted(v) for k, v in rels.items()} for head, rels in theirs.items()}


# --- the element walk copa's parse did over ElementTree's tree (the rule the rows must keep) -----------------------

_RPM = "{http://linux.duke.edu/metadata/rpm}"


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _int(value: str | None) -> int:
    try:
        return int(value) if value is not None else 0
    except ValueError:
        return 0


def _walk_row(elem: ET.Element) -> list[Any]:
    fields: dict[str, ET.Element] = {}
    for c in elem:
        fields.setdefault(_local(c.tag), c)
    name, version = fields.get("name"), fields.get("version")
    if name is None or not name.text or version is None:
        raise IntegrityError("a <package> without <name> or <version>")
    location, checksum, size = fields.get("location"), fields.get("checksum"), fields.get("size")
    time, fmt, arch = fields.get("time"), fields.get("format"), fields.get("arch")
    deps: list[list[list[Any]]] = [[] for _ in KINDS]
    files: list[str] = []
    sourcerpm, header = "", (0, 0)
    for c in fmt if fmt is not None else ():
        kind = next((i for i, k in enumerate(KINDS) if c.tag in (_RPM + k, k)), None)
        if kind is not None:
            deps[kind] = [[e.get("name", ""), e.get("flags", ""), e.get("epoch", ""), e.get("ver", ""),
                           e.get("rel", ""), e.get("pre", "0") in ("1", "true")] for e in c]
        elif _local(c.tag) == "file" and c.text:
            files.append(c.text)
        elif _local(c.tag) == "sourcerpm":
            sourcerpm = c.text or ""
        elif _local(c.tag) == "header-range":
            header = (_int(c.get("start")), _int(c.get("end")))
    ck_type = "sha256"
    ck_value = ""
    if checksum is not None:
        ck_type = (checksum.get("type") or "").lower()
        ck_value = (checksum.text or "").strip().lower()
    base = ""
    if location is not None:
        base = location.get("{http://www.w3.org/XML/1998/namespace}base", "") or location.get("base", "")
    return [name.text.strip(), (arch.text or "").strip() if arch is not None else "",
            version.get("epoch", "0") or "0", version.get("ver", ""), version.get("rel", ""), ck_type, ck_value,
            location.get("href", "") if location is not None else "", base,
            _int(size.get("package")) if size is not None else 0,
            _int(size.get("installed")) if size is not None else 0,
            _int(time.get("build")) if time is not None else 0, sourcerpm, header[0], header[1], files, *deps]


def _walk(xml: bytes) -> list[str]:
    """Each <package> (any depth) as its end event comes, then emptied, as the old pull parse did."""
    rows = []
    parser: Any = ET.XMLPullParser(events=("end",))  # (typeshed types its events too loosely)
    parser.feed(xml)
    parser.close()
    for _event, elem in parser.read_events():
        assert isinstance(elem, ET.Element)
        if _local(elem.tag) == "package":
            if elem.get("type", "rpm") == "rpm":
                rows.append(json.dumps(_walk_row(elem)))
            elem.clear()
    return rows


CK = "ab" * 32
ODD = {
    "plain": f"""<metadata xmlns="http://linux.duke.edu/metadata/common" xmlns:rpm="http://linux.duke.edu/metadata/rpm">
<package type="rpm"><name>a</name><arch>noarch</arch><version epoch="1" ver="2" rel="3"/>
<checksum type="SHA256">{CK.upper()}</checksum><location xml:base="http://m/" href="a.rpm"/><size package="9"/>
<time build="77"/><format><rpm:sourcerpm>a.src.rpm</rpm:sourcerpm><rpm:header-range start="1" end="x"/>
<rpm:provides><rpm:entry name="a" flags="EQ" epoch="1" ver="2" rel="3"/><rpm:entry name="b"/></rpm:provides>
<rpm:requires><rpm:entry name="c" pre="1"/><rpm:entry name="d" pre="true"/><rpm:entry name="e" pre="0"/></rpm:requires>
<file>/etc/a</file><file type="dir">/etc/a.d</file><file></file></format></package></metadata>""",
    "mixed content and repeats": f"""<metadata xmlns:rpm="http://linux.duke.edu/metadata/rpm"><package>
<name> first <b>bold</b> tail </name><name>second</name><arch>x<i/>86</arch><version ver="1" rel="1"/>
<version ver="9"/><checksum type="sha256">{CK}<x/>ff</checksum><format><rpm:provides><rpm:entry name="p1"/>
</rpm:provides><rpm:provides><rpm:entry name="p2"/></rpm:provides><sourcerpm>s1<!-- c -->s2</sourcerpm>
<sourcerpm>last</sourcerpm><file>/a<x/>b</file><file><![CDATA[/c&d]]></file></format>
<format><rpm:requires><rpm:entry name="ignored"/></rpm:requires></format></package></metadata>""",
    "nested packages": f"""<root><package><name>outer</name><version ver="1"/><checksum type="sha256">{CK}</checksum>
<format><rpm:requires xmlns:rpm="http://linux.duke.edu/metadata/rpm"><rpm:entry name="r1"><package><name>in-entry</name>
<version ver="2"/></package></rpm:entry><package type="rpm" name="x"><name>in-list</name><version ver="3"/></package>
<rpm:entry name="r2"/></rpm:requires><package><name>in-format</name><version ver="4"/></package></format>
<name>ignored</name></package><package type="srpm"><name>skipped</name><version ver="1"/></package></root>""",
    "namespaces": f"""<m xmlns="urn:other" xmlns:o="urn:o"><o:package><name>n</name><o:version ver="5" o:rel="x"/>
<checksum type="sha1">{CK[:40]}</checksum><format><provides><entry name="unqualified"/></provides>
<o:provides><o:entry name="other-namespace"/></o:provides><o:file>/o</o:file></format></o:package></m>""",
    "no namespaces": f"""<metadata><package><name>plain</name><version ver="1"/><checksum type="sha256">{CK}</checksum>
<location base="http://b/" href="p.rpm"/><format><provides><entry name="p" flags="GE" ver="1"/></provides>
<requires><entry/></requires><enhances><x name="any element is an entry"/></enhances></format></package>
</metadata>""",
}


@pytest.mark.parametrize("case", sorted(ODD))
@pytest.mark.parametrize("chunk", [1 << 20, 3])
def test_odd_documents_read_as_the_element_walk_reads_them(case: str, chunk: int,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    xml = ODD[case].encode()
    monkeypatch.setattr(repomd, "_CHUNK", chunk)
    ours = [json.dumps(r) for r in iter_rows(io.BytesIO(xml), "primary")]
    assert ours == _walk(xml)
    assert ours  # (every case has rows: a reader that yields nothing cannot pass)


@pytest.mark.parametrize(("xml", "message"), [
    (b"<metadata><package><name>x</name></package></metadata>", "without <name> or <version>"),
    (b"<metadata><package><name></name><version/></package></metadata>", "without <name> or <version>"),
    (b"<metadata><package><name>x</name><version/><checksum type='crc'>00</checksum></package></metadata>",
     "unsupported checksum"),
    (b"<metadata><package><name>x</name><version/>", "malformed XML"),
    (b"<metadata><package><name>&undefined;</name></package></metadata>", "malformed XML"),
    (b"<?xml version='1.0' encoding='x-unknown'?><metadata/>", "XML"),
    (b"<!DOCTYPE m [<!ENTITY e 'x'>]><metadata/>", "DOCTYPE"),
    (b"  \n", "empty document"),
])
def test_bad_documents_are_integrity_errors(xml: bytes, message: str) -> None:
    with pytest.raises(IntegrityError, match=re.escape(message)):
        list(iter_rows(io.BytesIO(xml), "primary"))
