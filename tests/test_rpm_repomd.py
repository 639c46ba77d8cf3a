"""rpm-md metadata (copa/pkg/rpm/repomd.py) and modular filtering (copa/pkg/rpm/modules.py), against dnf.

Repositories are built by rpmbuild + createrepo_c (tests/support/rpmrepo.py), served on 127.0.0.1, and read both
by copa and by `dnf repoquery` (private cache, empty installroot): the package set, each package's relations,
and which packages modular filtering leaves, must be the same.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import zstandard

from copa.errors import IntegrityError
from copa.pkg.cache import Cache
from copa.pkg.fetch import Fetcher, FetchItem
from copa.pkg.openpgp import Keyring
from copa.pkg.rpm.modules import (
    ModuleState,
    build_filter,
    load_modules,
    parse_module_states,
    parse_modules_yaml,
    split_nevra,
)
from copa.pkg.rpm.repomd import (
    RepoIndex,
    RepomdEntry,
    fetch_repomd,
    iter_packages,
    load_repository,
    open_decompressed,
    parse_repomd,
)
from copa.pkg.rpm.repos import RpmRepository
from tests.support.rpmrepo import RepoServer, RpmRepo, build_repo, dnf_query
from tests.support.rpmtools import GpgKey, make_gpg_key
from tests.support.rpmtools import rpm_spec as Pkg

pytestmark = pytest.mark.skipif(shutil.which("createrepo_c") is None or shutil.which("dnf") is None,
                                reason="createrepo_c and dnf build and check the repositories")

PKGS = [
    Pkg("hello", "1.0", epoch=2, arch="x86_64", lines=(
        "Requires: bash >= 4.0", "Requires(pre): shadow", "Requires: /bin/sh", "Requires: libfoo.so.1()(64bit)",
        "Provides: hv = 1.0", "Conflicts: oldhello < 1.0", "Obsoletes: hello-old <= 0.9", "Recommends: extra",
        "Suggests: hello-doc", "Supplements: (hello-lang and langpacks)", "Enhances: bash",
        "Requires: (shadow or passwd)"),
        files={"/usr/bin/hello": "1", "/etc/hello.conf": "c", "/usr/share/hello/data": "d"}),
    Pkg("hello", "1.1", "2.el9", epoch=2, arch="x86_64", lines=("Requires: bash >= 5", "Provides: hv = 1.1"),
        files={"/usr/bin/hello": "2", "/usr/share/hello/data": "d2"}),
    Pkg("bash", "5.1", "3.el9", lines=("Provides: /bin/sh",), files={"/usr/bin/bash": "b", "/bin/sh": "s"}),
    Pkg("libfoo", "1.0", arch="x86_64", lines=("Provides: libfoo.so.1()(64bit)",),
        files={"/usr/lib64/libfoo.so.1": "l"}),
    Pkg("shadow", "4.9", "1~rc1", files={"/usr/sbin/useradd": "u"}),
    Pkg("extra", "0.1", "1", epoch=0, lines=("Requires: hello = 2:1.1-2.el9",)),
]


@pytest.fixture(scope="module")
def key(tmp_path_factory: pytest.TempPathFactory) -> GpgKey:
    return make_gpg_key(tmp_path_factory.mktemp("gpg"))


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory, key: GpgKey) -> RpmRepo:
    return build_repo(tmp_path_factory.mktemp("rpmrepo") / "repo", PKGS, key=key)


@pytest.fixture(scope="module")
def server(repo: RpmRepo) -> Iterator[RepoServer]:
    with RepoServer(repo.root.parent) as s:
        yield s


def _fetcher(tmp_path: Path) -> Fetcher:
    return Fetcher(Cache(tmp_path / "cache"), retries=1)


def _ring(key: GpgKey) -> Keyring:
    return Keyring.from_file(key.public)


def _load(url: str, tmp_path: Path, key: GpgKey | None = None, **kw: object) -> RepoIndex:
    repo = RpmRepository("t", "t", (url,), repo_gpgcheck=key is not None)
    return load_repository(repo, _fetcher(tmp_path), lambda _r: _ring(key) if key else Keyring((), ""),
                           **kw)  # type: ignore[arg-type]


def test_packages_and_relations_match_dnf(server: RepoServer, key: GpgKey, tmp_path: Path) -> None:
    url = f"{server.url}/repo"
    index = _load(url, tmp_path, key)
    assert index.loaded.signed
    ours = sorted(f"{p.name} {p.epoch} {p.version} {p.release} {p.arch}" for p in index)
    assert ours == sorted(dnf_query(url, tmp_path / "dnf", "--qf", "%{name} %{epoch} %{version} %{release} %{arch}"))
    kinds = ("provides", "requires", "requires_pre", "conflicts", "obsoletes", "recommends", "suggests",
             "supplements", "enhances")
    qf = "@@%{name}-%{evr}.%{arch}\n" + "".join(f"##{k}\n%{{{k}}}\n" for k in kinds)
    theirs: dict[str, dict[str, list[str]]] = {}
    current: list[str] = []
    for line in dnf_query(url, tmp_path / "dnf", "--qf", qf):  # one dnf run: every package, every relation
        if line.startswith("@@"):
            theirs[line[2:]] = {k: [] for k in kinds}
            nevra = line[2:]
        elif line.startswith("##"):
            current = theirs[nevra][line[2:]]
        else:
            current.append(line)
    assert sorted(theirs) == sorted(p.nevra for p in index)
    for pkg in index:
        for kind in kinds:
            rels = [r for r in pkg.requires if r.pre] if kind == "requires_pre" else getattr(pkg, kind)
            assert sorted({str(r) for r in rels}) == sorted(theirs[pkg.nevra][kind]), (pkg.nevra, kind)
    hello = next(p for p in index.versions("hello") if p.version == "1.0")
    # primary's file subset: /etc and bin paths, not /usr/share
    assert hello.files == ("/etc/hello.conf", "/usr/bin/hello")
    where = dnf_query(url, tmp_path / "dnf", "--qf", "%{location} %{sourcerpm}", hello.nevra)
    assert where == [f"{hello.href} {hello.sourcerpm}"]
    # the location and checksum lead to the very .rpm
    path = _fetcher(tmp_path).fetch(FetchItem(hello.url, hello.checksum.value, hello.size, "hello"))
    assert path.read_bytes()[:4] == b"\xed\xab\xee\xdb"
    assert 0 < hello.header_start < hello.header_end <= hello.size


def test_keep_reads_other_names_on_demand(server: RepoServer, tmp_path: Path) -> None:
    index = _load(f"{server.url}/repo", tmp_path, keep={"hello"}.__contains__)
    assert {p.version for p in index.versions("hello")} == {"1.0", "1.1"}
    assert index.passes == 0
    assert [p.nevra for p in index.versions("bash")] == ["bash-5.1-3.el9.noarch"]
    assert index.passes == 1  # one pass took bash and everything hello requires (shadow, libfoo)
    assert [p.name for p in index.versions("shadow")] == ["shadow"]
    assert [p.name for p in index.providers("libfoo.so.1()(64bit)")] == ["libfoo"]
    assert index.passes == 1
    assert [p.name for p in index.providers("/bin/sh")] == ["bash"]
    assert {p.version for p in index.providers("hv")} == {"1.0", "1.1"}
    assert index.versions("nothing") == ()
    # a file primary does not list: filelists answers
    owners = index.filelist_providers("/usr/share/hello/data", _fetcher(tmp_path))
    assert {p.version for p in owners} == {"1.0", "1.1"}
    only_old = index.filelist_providers("/etc/hello.conf", _fetcher(tmp_path))  # in filelists too
    assert [p.version for p in only_old] == ["1.0"]
    assert index.filelist_providers("/usr/share/hello/data", _fetcher(tmp_path)) == owners
    assert index.filelist_passes == 2  # answers are kept


@pytest.mark.parametrize(("compress", "checksum"), [("bz2", "sha1"), ("xz", "sha512"), ("gz", "sha384")])
def test_compressions_and_checksums(compress: str, checksum: str, tmp_path: Path) -> None:
    built = build_repo(tmp_path / "repo", [Pkg("bash", "5.1", "3.el9", files={"/bin/sh": "s"})], compress=compress,
                       checksum=checksum)
    with RepoServer(built.root) as s:
        index = _load(s.url, tmp_path)
        assert index.loaded.repomd.entries["primary"].checksum.type == checksum
        assert [p.nevra for p in index] == ["bash-5.1-3.el9.noarch"]
        assert index.versions("bash")[0].checksum.type == checksum
        primary = index.loaded.repomd.entries["primary"].href
        asked = len([r for r in s.requests if r.endswith(primary)])
        _load(s.url, tmp_path)  # the cache knows which sha256 the sha1/sha512 file has: no second download
        assert len([r for r in s.requests if r.endswith(primary)]) == asked == 1


def test_zstd_and_bounded_decompression(repo: RpmRepo, tmp_path: Path) -> None:
    repomd = parse_repomd(repo.repomd.read_bytes(), "repomd")
    entry = repomd.entries["primary"]
    xml = gzip.decompress((repo.root / entry.href).read_bytes())
    zst = tmp_path / "primary.xml.zst"
    zst.write_bytes(zstandard.ZstdCompressor().compress(xml))
    z_entry = RepomdEntry("primary", "repodata/primary.xml.zst", entry.checksum, None, open_size=len(xml))
    with open_decompressed(zst, z_entry, "zst") as stream:
        assert len(list(iter_packages(stream, "zst"))) == len(PKGS)
    small = RepomdEntry("primary", "repodata/primary.xml.zst", entry.checksum, None, open_size=len(xml) - 1)
    with pytest.raises(IntegrityError, match="open-size"), open_decompressed(zst, small, "zst") as stream:
        list(iter_packages(stream, "zst"))


def _copy(repo: RpmRepo, dest: Path) -> Path:
    shutil.copytree(repo.root, dest)
    return dest


def test_wrong_checksum_is_an_integrity_error(repo: RpmRepo, tmp_path: Path) -> None:
    root = _copy(repo, tmp_path / "repo")
    entry = parse_repomd((root / "repodata/repomd.xml").read_bytes(), "r").entries["primary"]
    (root / entry.href).write_bytes(gzip.compress(b"<metadata/>"))
    with RepoServer(root) as s, pytest.raises(IntegrityError) as e:
        _load(s.url, tmp_path)
    assert e.value.exit_code == 5


def test_repomd_signature(repo: RpmRepo, key: GpgKey, tmp_path: Path) -> None:
    other = make_gpg_key(tmp_path / "other", uid="other <other@example.invalid>")
    root = _copy(repo, tmp_path / "repo")
    with RepoServer(root) as s:
        with pytest.raises(IntegrityError, match="does not verify") as e:
            _load(s.url, tmp_path, other)
        assert e.value.exit_code == 5
        # repomd.xml changed after signing
        md = root / "repodata/repomd.xml"
        md.write_bytes(md.read_bytes().replace(b"<revision>", b"<revision>1"))
        with pytest.raises(IntegrityError, match="does not verify"):
            _load(s.url, tmp_path, key)
        (root / "repodata/repomd.xml.asc").unlink()
        with pytest.raises(IntegrityError, match=r"repomd\.xml\.asc does not exist"):
            _load(s.url, tmp_path, key)
        _load(s.url, tmp_path)  # repo_gpgcheck=0: not asked for


BOMB = (b'<?xml version="1.0"?>\n<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;">]>\n'
        b"<metadata><package type='rpm'><name>&lol2;</name></package></metadata>")


def test_malformed_and_hostile_xml(tmp_path: Path) -> None:
    with pytest.raises(IntegrityError, match="DOCTYPE"):
        list(iter_packages(io.BytesIO(BOMB), "bomb"))
    with pytest.raises(IntegrityError, match="DOCTYPE"):
        parse_repomd(b"<!-- c --><!DOCTYPE repomd SYSTEM 'file:///etc/passwd'><repomd/>", "repomd")
    with pytest.raises(IntegrityError, match="malformed XML"):
        list(iter_packages(io.BytesIO(b"<metadata><package type='rpm'><name>x</name>"), "truncated"))
    with pytest.raises(IntegrityError, match="malformed XML"):
        list(iter_packages(io.BytesIO(b"<metadata><package><name>&xxe;</name></package></metadata>"), "entity"))
    with pytest.raises(IntegrityError, match="lacks"):
        parse_repomd(b"<repomd><data type='primary'></data></repomd>", "repomd")
    # served: a DOCTYPE in repomd.xml stops the load
    root = tmp_path / "repo"
    (root / "repodata").mkdir(parents=True)
    (root / "repodata/repomd.xml").write_bytes(BOMB)
    with RepoServer(root) as s, pytest.raises(IntegrityError, match="DOCTYPE"):
        _load(s.url, tmp_path)


def test_metalink_and_mirrorlist(repo: RpmRepo, tmp_path: Path) -> None:
    served = tmp_path / "served"
    shutil.copytree(repo.root, served / "repo")
    sha = hashlib.sha256(repo.repomd.read_bytes()).hexdigest()
    with RepoServer(served) as s:
        def metalink(digest: str) -> bytes:
            return (
                '<?xml version="1.0" encoding="utf-8"?>\n<metalink version="3.0" '
                'xmlns="http://www.metalinker.org/" xmlns:mm0="http://fedorahosted.org/mirrormanager">\n'
                '<files><file name="repomd.xml"><mm0:alternates><mm0:alternate><verification>'
                '<hash type="sha256">' + "0" * 64 + "</hash></verification></mm0:alternate></mm0:alternates>"
                f'<verification><hash type="sha256">{digest}</hash></verification><resources maxconnections="1">'
                f'<url protocol="http" type="http" preference="50">http://127.0.0.1:9/none/repodata/repomd.xml</url>'
                f'<url protocol="http" type="http" preference="100">{s.url}/repo/repodata/repomd.xml</url>'
                "</resources></file></files></metalink>\n").encode()

        (served / "metalink").write_bytes(metalink(sha))
        (served / "bad-metalink").write_bytes(metalink("1" * 64))
        (served / "mirrorlist").write_text(f"# mirrors\n{s.url}/$basearch-missing\n{s.url}/repo\n")
        fetcher = _fetcher(tmp_path)
        none = lambda _r: Keyring((), "")  # noqa: E731
        via_metalink = RpmRepository("m", "m", (), metalink=f"{s.url}/metalink")
        assert fetch_repomd(via_metalink, fetcher, none).base_url == f"{s.url}/repo"
        with pytest.raises(IntegrityError, match="metalink"):
            fetch_repomd(RpmRepository("m", "m", (), metalink=f"{s.url}/bad-metalink"), fetcher, none)
        via_list = RpmRepository("l", "l", (), mirrorlist=f"{s.url}/mirrorlist")
        loaded = fetch_repomd(via_list, fetcher, none, {"basearch": "x86_64"})
        assert loaded.base_url == f"{s.url}/repo"
        assert "/x86_64-missing/repodata/repomd.xml" in s.requests  # variables expanded, then the next mirror
        # a mirrorlist= that serves a metalink is read as one
        assert fetch_repomd(RpmRepository("x", "x", (), mirrorlist=f"{s.url}/metalink"), fetcher,
                            none).base_url == f"{s.url}/repo"


# ---------------------------------------------------------------------------------------------------- modularity

MODULES = """\
---
document: modulemd
version: 2
data:
  name: nodejs
  stream: "14"
  version: 8030020210304194401
  context: bd1311ed
  arch: x86_64
  summary: Javascript runtime
  description: >-
    Node.js
  license: {module: [MIT]}
  profiles:
    common: {rpms: [nodejs, npm]}
  artifacts:
    rpms:
    - nodejs-1:14.16.0-2.module+el8.x86_64
    - npm-1:6.14.11-1.module+el8.x86_64
...
---
document: modulemd
version: 2
data:
  name: nodejs
  stream: "16"
  version: 8050020220101000000
  context: abcdef12
  arch: x86_64
  summary: Javascript runtime
  description: Node.js 16
  license: {module: [MIT]}
  artifacts:
    rpms: [nodejs-1:16.14.0-1.module+el8.x86_64]
...
---
document: modulemd
version: 2
data:
  name: tools
  stream: "1.10"
  version: 1
  context: c0ffee00
  arch: x86_64
  summary: tools
  description: tools
  license: {module: [MIT]}
  artifacts:
    rpms: [tool-0:1.10-1.noarch]
...
---
document: modulemd-defaults
version: 1
data:
  module: nodejs
  stream: "14"
  profiles: {"14": [common]}
...
"""

MODULAR_PKGS = [
    Pkg("nodejs", "14.16.0", "2.module+el8", epoch=1, arch="x86_64"),
    Pkg("npm", "6.14.11", "1.module+el8", epoch=1, arch="x86_64"),
    Pkg("nodejs", "16.14.0", "1.module+el8", epoch=1, arch="x86_64"),
    Pkg("nodejs", "10.0.0", "1.el8", epoch=1, arch="x86_64"),  # ursine: hidden while a nodejs stream is active
    Pkg("tool", "1.10", "1"),
    Pkg("tool", "1.9", "1"),  # ursine too, hidden only when tools:1.10 is enabled (no default stream)
    Pkg("plain", "1.0", "1"),
]


@pytest.fixture(scope="module")
def modular(tmp_path_factory: pytest.TempPathFactory) -> RpmRepo:
    return build_repo(tmp_path_factory.mktemp("modular") / "repo", MODULAR_PKGS, modules_yaml=MODULES)


def test_modules_yaml() -> None:
    meta = parse_modules_yaml(MODULES, "modules")
    assert [(s.name, s.stream, s.version) for s in meta.streams] == [
        ("nodejs", "14", 8030020210304194401), ("nodejs", "16", 8050020220101000000), ("tools", "1.10", 1)]
    assert meta.defaults["nodejs"].stream == "14"
    assert meta.streams[0].profiles == {"common": ("nodejs", "npm")}
    assert split_nevra("npm-1:6.14.11-1.module+el8.x86_64") == ("npm", "1", "6.14.11", "1.module+el8", "x86_64")
    with pytest.raises(IntegrityError):
        parse_modules_yaml("document: [unclosed", "bad")


N14, NPM, N16 = ("nodejs-1:14.16.0-2.module+el8.x86_64", "npm-1:6.14.11-1.module+el8.x86_64",
                 "nodejs-1:16.14.0-1.module+el8.x86_64")


@pytest.mark.parametrize(("states", "expected"), [
    ({}, {N14, NPM, "plain-1.0-1.noarch", "tool-1.9-1.noarch"}),
    ({"nodejs": "[nodejs]\nname=nodejs\nstream=16\nprofiles=\nstate=enabled\n"},
     {N16, "plain-1.0-1.noarch", "tool-1.9-1.noarch"}),
    ({"nodejs": "[nodejs]\nname=nodejs\nstream=\nprofiles=\nstate=disabled\n"},
     {"nodejs-1:10.0.0-1.el8.x86_64", "plain-1.0-1.noarch", "tool-1.9-1.noarch"}),
    ({"tools": "[tools]\nname=tools\nstream=1.10\nprofiles=\nstate=enabled\n"},
     {N14, NPM, "plain-1.0-1.noarch", "tool-1.10-1.noarch"}),
], ids=["defaults", "enabled-16", "disabled", "enabled-tools"])
def test_modular_filtering_matches_dnf(modular: RpmRepo, states: dict[str, str], expected: set[str],
                                       tmp_path: Path) -> None:
    root = tmp_path / "root"
    files = {}
    for name, text in states.items():
        path = root / "etc/dnf/modules.d" / f"{name}.module"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        files[f"etc/dnf/modules.d/{name}.module"] = text.encode()
    with RepoServer(modular.root) as s:
        index = _load(s.url, tmp_path)
        meta = load_modules(index.loaded, _fetcher(tmp_path))
        filt = build_filter(meta, parse_module_states(files))
        ours = sorted(p.nevra for p in index if filt.visible(p, index.repo))
        theirs = dnf_query(s.url, tmp_path / "dnf", "--available", "--qf", "%{name}-%{evr}.%{arch}", root=root)
        assert ours == sorted(theirs) == sorted(expected)
        # module_hotfixes=1: nothing filtered
        hot = RpmRepository("t", "t", (s.url,), module_hotfixes=True)
        assert all(filt.visible(p, hot) for p in index)
        assert sorted(p.nevra for p in index) == sorted(dnf_query(
            s.url, tmp_path / "dnf", "--available", "--qf", "%{name}-%{evr}.%{arch}", root=root,
            setopts=("t.module_hotfixes=1",)))


def test_module_states() -> None:
    states = parse_module_states({"etc/dnf/modules.d/a.module": b"[a]\nname=a\nstream=2\nstate=installed\n",
                                  "etc/dnf/modules.d/broken.module": b"oops\n",
                                  "etc/dnf/modules.d/readme": b"[x]\nstate=enabled\n"})
    assert states == {"a": ModuleState("a", "2", "enabled")}


def test_prefetch_fills_the_cache_only(server: RepoServer, repo: RpmRepo, tmp_path: Path) -> None:
    from copa.pkg.base import RepositoryOptions
    from copa.pkg.rpm.prefetch import MetadataPrefetch

    captured = {"etc/os-release": b'ID="rocky"\nVERSION_ID="9.3"\n',
                "etc/yum.repos.d/t.repo": f"[t]\nbaseurl={server.url}/repo\nrepo_gpgcheck=1\n".encode()}
    fetcher = _fetcher(tmp_path)
    prefetch = MetadataPrefetch(RepositoryOptions(), "amd64", "", fetcher)
    before = len(server.requests)
    prefetch.start(captured)
    prefetch.join()
    entry = parse_repomd(repo.repomd.read_bytes(), "r").entries["primary"]
    assert fetcher.cache.lookup(entry.checksum.value, entry.size) is not None
    assert not any(r.endswith(".asc") for r in server.requests[before:])  # nothing verified: the plan does that
    # repo_gpgcheck=1: not parsed before the plan verifies repomd; without it, parsed already
    assert not list((tmp_path / "cache" / "derived").glob("rpm-primary-*.rows"))
    unsigned = {**captured, "etc/yum.repos.d/t.repo": f"[t]\nbaseurl={server.url}/repo\n".encode()}
    prefetch.start(unsigned)
    prefetch.join()
    assert len(list((tmp_path / "cache" / "derived").glob("rpm-primary-*.rows"))) == 1
    idle = MetadataPrefetch(RepositoryOptions(), "amd64", "", fetcher)
    assert idle.setup({"etc/apt/sources.list": b"deb http://127.0.0.1:9/ x main\n"}) is None
    idle.start({})
    idle.join()


PLATFORM_MODULES = """\
---
document: modulemd
version: 2
data:
  name: m
  stream: "1"
  version: 1
  context: c8
  arch: noarch
  summary: s
  description: d
  license: {module: [MIT]}
  dependencies:
  - requires: {platform: [el8]}
  artifacts: {rpms: [a-0:1-1.noarch]}
...
---
document: modulemd
version: 2
data:
  name: m
  stream: "1"
  version: 1
  context: c9
  arch: noarch
  summary: s
  description: d
  license: {module: [MIT]}
  dependencies:
  - requires: {platform: [el9]}
  artifacts: {rpms: [a-0:2-1.noarch]}
...
---
document: modulemd-defaults
version: 1
data: {module: m, stream: "1"}
...
"""


@pytest.mark.parametrize(("platform", "expected"), [("el8", ["a-1-1.noarch", "a-2-1.noarch"]),
                                                     (None, ["a-0.5-1.noarch"])])
def test_module_platform_matches_dnf(platform: str | None, expected: list[str], tmp_path: Path) -> None:
    """The image's PLATFORM_ID decides which streams can be active (dnf 4.14 on an el9 platform here activates
    neither context: a case copa does not copy, as no real repository mixes platforms in one stream)."""
    from copa.pkg.rpm.modules import platform_of

    built = build_repo(tmp_path / "repo", [Pkg("a", "1"), Pkg("a", "2"), Pkg("a", "0.5")],
                       modules_yaml=PLATFORM_MODULES)
    os_release = "ID=rhel\nVERSION_ID=8\n" + (f'PLATFORM_ID="platform:{platform}"\n' if platform else "")
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc/os-release").write_text(os_release)
    with RepoServer(built.root) as s:
        index = _load(s.url, tmp_path)
        filt = build_filter(load_modules(index.loaded, _fetcher(tmp_path)), {}, platform_of(os_release))
        ours = sorted(p.nevra for p in index if filt.visible(p, index.repo))
        theirs = dnf_query(s.url, tmp_path / "dnf", "--available", "--qf", "%{name}-%{evr}.%{arch}", root=root)
        assert ours == sorted(theirs) == expected


def test_parsed_primary_is_cached(server: RepoServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import copa.pkg.rpm.repomd as repomd

    first = sorted(_load(f"{server.url}/repo", tmp_path), key=lambda p: p.nevra)
    assert len(list((tmp_path / "cache" / "derived").glob("rpm-primary-*.rows"))) == 1

    def no_xml(*_args: object) -> None:
        raise AssertionError("primary.xml read again")

    # (the cached lines answer: primary.xml is not even opened; a kept package element is still parsed alone)
    monkeypatch.setattr(repomd, "open_decompressed", no_xml)
    again = sorted(_load(f"{server.url}/repo", tmp_path), key=lambda p: p.nevra)
    assert again == first


@pytest.mark.parametrize("patterns", [("hello-1.0*",), ("libfoo.x86_64", "sh*"), ("bash-0:5.1-3.el9.noarch",),
                                      ("*-1.1-2.el9*",), ("hello-2:1.1-2.el9.x86_64", "extra-0.1")])
def test_excludepkgs_match_as_dnf(server: RepoServer, patterns: tuple[str, ...], tmp_path: Path) -> None:
    from copa.pkg.rpm.repos import MainConfig, RepoSetup

    url = f"{server.url}/repo"
    index = _load(url, tmp_path)
    setup = RepoSetup(MainConfig(excludepkgs=patterns), (index.repo,))
    ours = sorted(p.nevra for p in index if setup.visible(index.repo, p.name, (p.epoch, p.version, p.release),
                                                          p.arch))
    theirs = dnf_query(url, tmp_path / "dnf", "--qf", "%{name}-%{evr}.%{arch}",
                       setopts=(f"excludepkgs={','.join(patterns)}",))
    assert ours == sorted(theirs)


def test_skip_if_unavailable(server: RepoServer, tmp_path: Path) -> None:
    from copa.errors import RegistryError
    from copa.pkg.rpm.repomd import load_repositories

    good = RpmRepository("good", "good", (f"{server.url}/repo",))
    down = RpmRepository("down", "down", ("http://127.0.0.1:9/repo",), skip_if_unavailable=True)
    missing = RpmRepository("missing", "missing", (f"{server.url}/nothing",), skip_if_unavailable=True)
    none = lambda _r: Keyring((), "")  # noqa: E731
    indexes, warnings = load_repositories([down, good, missing], _fetcher(tmp_path), none)
    assert [ix.repo.id for ix in indexes] == ["good"]
    assert [w.split()[1] for w in warnings] == ["down", "missing"]
    with pytest.raises(RegistryError):
        load_repositories([good, RpmRepository("down", "down", ("http://127.0.0.1:9/repo",))], _fetcher(tmp_path),
                          none)


def test_location_base_and_packages_elsewhere(repo: RpmRepo, tmp_path: Path) -> None:
    """createrepo_c --baseurl writes xml:base on each <location>: packages are fetched from there, as dnf does."""
    from tests.support.rpmrepo import createrepo

    pool = tmp_path / "pool"
    shutil.copytree(repo.root, pool, ignore=shutil.ignore_patterns("repodata"))
    shutil.copytree(pool, tmp_path / "meta" / "repo")
    with RepoServer(pool) as packages, RepoServer(tmp_path / "meta") as meta:
        createrepo(tmp_path / "meta" / "repo", "--no-database", f"--baseurl={packages.url}/")
        url = f"{meta.url}/repo"
        index = _load(url, tmp_path)
        ours = sorted(p.url for p in index)
        # dnf downloads from the package's xml:base (dnf/repo.py passes pkg.baseurl to librepo as base_url);
        # `--location` would show the repository's URL instead
        rows = [line.split("|") for line in dnf_query(url, tmp_path / "dnf", "--qf", "%{baseurl}|%{location}")]
        assert ours == sorted(base.rstrip("/") + "/" + loc for base, loc in rows)
        assert all(u.startswith(packages.url) for u in ours)
        hello = index.versions("hello")[0]
        _fetcher(tmp_path).fetch(FetchItem(hello.url, hello.checksum.value, hello.size, "hello"))
