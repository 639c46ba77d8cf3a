"""rpm macros that change what rpm installs (%_excludedocs, %_install_langs, %_netsharedpath; dnf's
tsflags=nodocs), checked against rpm 4.18 itself: a root with an old version installed by rpm, the image's macro
files in it; copa places the new version (install.py) and rewrites the database; the oracle is the same root
upgraded by `rpm -U` reading the root's own macro files (`--macros` naming them). Files on disk, FILESTATES in the
database and `rpm -V` must be equal."""

from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from copa.oci.layer import Compression, write_layer
from copa.pkg.rpm import caps
from copa.pkg.rpm.header import Header, installed_header
from copa.pkg.rpm.install import LayerPlan, install_package, skipped_files
from copa.pkg.rpm.macros import InstallPolicy, expand, parse_macros, read_policy
from copa.pkg.rpm.rpmdb.installed import read_database
from copa.pkg.rpm.rpmfile import read_rpm
from copa.pkg.rpm.tags import Tag
from tests.support import debimage, rootview
from tests.support.rpmtools import RpmFile, RpmSpec, build_rpm, init_root, rpm_root_args

pytestmark = pytest.mark.skipif(shutil.which("rpmbuild") is None, reason="needs rpm tools")

HOST_MACROS = "/usr/lib/rpm/macros:/usr/lib/rpm/macros.d/macros.*:/usr/lib/rpm/debian/macros"
CAPTURE = ("etc", "usr/lib/rpm/macros.d", "var/lib/rpm")


def _spec(version: str, extra: tuple[RpmFile, ...] = ()) -> RpmSpec:
    files = (
        RpmFile("/usr/bin/tool", f"tool {version}\n".encode(), 0o755),
        RpmFile("/usr/share/doc/docs", kind="dir"),
        RpmFile("/usr/share/doc/docs/README", f"readme {version}\n".encode(), attr="%doc"),
        RpmFile("/usr/share/doc/docs/sub", kind="dir"),
        RpmFile("/usr/share/doc/docs/sub/NOTES", b"notes\n", attr="%doc"),
        RpmFile("/usr/share/licenses/docs/COPYING", b"MIT\n", attr="%license"),
        RpmFile("/usr/share/locale/de/LC_MESSAGES/docs.mo", f"de {version}\n".encode(), attr="%lang(de)"),
        RpmFile("/usr/share/locale/en/LC_MESSAGES/docs.mo", f"en {version}\n".encode(), attr="%lang(en)"),
        RpmFile("/usr/share/locale/C/LC_MESSAGES/docs.mo", f"C {version}\n".encode(), attr="%lang(C)"),
        RpmFile("/srv/shared", kind="dir"),
        RpmFile("/srv/shared/data", f"shared {version}\n".encode()),
        RpmFile("/srv/sharedother", f"not shared {version}\n".encode()),
        *extra,
    )
    return RpmSpec("docs", version, "1.el9", files=files)


OLD = _spec("1.0", (RpmFile("/usr/share/doc/docs/OLD", b"dropped in 1.1\n", attr="%doc"),))
NEW = _spec("1.1")

# name -> (macro files in the image, dnf.conf, macros in effect when the old version was installed)
CASES: dict[str, tuple[dict[str, str], str, bool]] = {
    "excludedocs": ({"etc/rpm/macros.image": "%_excludedocs 1\n"}, "", False),
    "excludedocs-both": ({"etc/rpm/macros.image": "%_excludedocs 1\n"}, "", True),
    "langs": ({"etc/rpm/macros.image-language-conf": "%_install_langs en_US:en\n"}, "", True),
    "langs-ubi-minimal": ({"etc/rpm/macros.image-language-conf": "%_install_langs C.utf8\n"}, "", False),
    "netshared": ({"usr/lib/rpm/macros.d/macros.site": "# site\n%_netsharedpath /srv/shared\n"}, "", True),
    "all-three-later-wins": ({"usr/lib/rpm/macros.d/macros.a": "%_excludedocs 0\n%_install_langs all\n",
                              "etc/rpm/macros": "%_excludedocs 1\n%langs de:%{nil}fr\n%_install_langs %{langs}\n"
                                                "%_netsharedpath /srv/shared/data:/nonexistent\n",
                              "etc/rpm/macros.x.rpmnew": "%_excludedocs 0\n"}, "", True),
    "dnf-nodocs": ({}, "[main]\ngpgcheck=1\ntsflags=nodocs\n", True),
}


def _write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)


def _rpm(root: Path, *args: str, nodocs: bool = False) -> subprocess.CompletedProcess[str]:
    macros = f"{HOST_MACROS}:{root}/usr/lib/rpm/macros.d/macros.*:{root}/etc/rpm/macros.*:{root}/etc/rpm/macros"
    extra = ["--excludedocs"] if nodocs else []
    rpm, *rest = rpm_root_args(root)  # --macros is ignored after other options
    return subprocess.run([rpm, "--macros", macros, *rest, *extra, *args], capture_output=True, text=True)


@pytest.fixture(scope="module")
def rpms(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    out = tmp_path_factory.mktemp("rpms")
    return build_rpm(OLD, out / "old"), build_rpm(NEW, out / "new")


def _copa_upgrade(root: Path, new_rpm: Path, stage: Path) -> None:
    view = rootview.view_of(root, CAPTURE)
    db = read_database(view)
    [(hnum, blob)] = db.headers.items()
    old = Header.parse(blob, "old")
    contents = read_rpm(new_rpm, stage)
    layer = LayerPlan.of(view, 1704067200)
    install_package(layer, contents, old, set())
    header = installed_header(contents.header, contents.headers.signature, install_time=1, install_tid=1,
                              file_states=layer.file_states(contents))
    change = db.upgrade([hnum], [header.to_bytes(magic=False)])
    rootview.apply(root, [*layer.entries.values(), *change.entries()])


@pytest.mark.parametrize("case", list(CASES))
def test_macros_as_rpm_applies_them(case: str, rpms: tuple[Path, Path], tmp_path: Path) -> None:
    files, dnf_conf, before = CASES[case]
    old_rpm, new_rpm = rpms
    base = tmp_path / "base"
    base.mkdir()
    nodocs = bool(dnf_conf)
    if before:
        _write(base, files)
        init_root(base, [])
        assert _rpm(base, "-i", "--nodeps", "--noscripts", str(old_rpm), nodocs=nodocs).returncode == 0
    else:
        init_root(base, [old_rpm])
        _write(base, files)
    if dnf_conf:
        _write(base, {"etc/dnf/dnf.conf": dnf_conf})
    oracle = debimage.copy_rootfs(base, tmp_path / "oracle")
    proc = _rpm(oracle, "-U", "--nodeps", "--noscripts", "--notriggers", str(new_rpm), nodocs=nodocs)
    assert proc.returncode == 0, proc.stderr
    ours = debimage.copy_rootfs(base, tmp_path / "copa")
    _copa_upgrade(ours, new_rpm, tmp_path / "stage")

    skip = frozenset({"var/lib/rpm/rpmdb.sqlite", "var/lib/rpm/rpmdb.sqlite-shm", "var/lib/rpm/rpmdb.sqlite-wal",
                      "var/lib/rpm/.rpm.lock"})
    diff = debimage.tree_diff(debimage.tree(ours, skip), debimage.tree(oracle, skip))
    assert not diff, "\n".join(diff)
    fmt = "[%{FILENAMES} %{FILESTATES:fstate}\\n]"
    got, want = _rpm(ours, "-q", "--qf", fmt, "docs"), _rpm(oracle, "-q", "--qf", fmt, "docs")
    assert got.returncode == 0 and got.stdout == want.stdout, got.stdout + got.stderr
    assert any(s in want.stdout for s in ("not installed", "net shared")), want.stdout  # the case skips something
    # (rootview.apply leaves mtimes to the layer writer: rpm -V's T column is masked)
    verify, want_verify = _rpm(ours, "-V", "docs"), _rpm(oracle, "-V", "docs")
    masked = [line[:7] + "." + line[8:] for line in verify.stdout.splitlines() if line[:9] != ".......T."]
    assert masked == want_verify.stdout.splitlines(), verify.stdout


def test_policy_reading(tmp_path: Path) -> None:
    macros = parse_macros("# c\n%_excludedocs 1\n  %_install_langs en:de\nnot a macro\n%multi a \\\n b\n"
                          "%f(x) %{?x}\n%_netsharedpath %{nil}/srv:%{?undefined}/opt%%\n%bad %(echo hi)\n")
    assert macros["_excludedocs"] == "1" and macros["_install_langs"] == "en:de" and macros["multi"] == "a \n b"
    assert expand("_netsharedpath", macros) == "/srv:/opt%"
    assert expand("bad", macros) is None
    files = {"etc/rpm/macros.a": b"%_install_langs %(cat /x)\n", "etc/rpm/macros.b~": b"%_excludedocs 1\n",
             "etc/dnf/dnf.conf": b"[main]\ntsflags=noscripts nodocs\n"}
    policy = read_policy(lambda p: files.get(p),
                         lambda d: [p.rsplit("/", 1)[1] for p in files if p.rsplit("/", 1)[0] == d])
    assert policy.excludedocs and policy.install_langs is None and policy.notes
    assert not read_policy(lambda p: None, lambda d: []).filters


def test_skip_rules_match_rpm_on_edge_cases(rpms: tuple[Path, Path], tmp_path: Path) -> None:
    """Language prefixes as rpm compares them (strncmp over the file's language) and net shared paths."""
    contents = read_rpm(rpms[1], tmp_path / "stage")
    names = ["/" + f.path for f in contents.files]

    def skipped(policy: InstallPolicy) -> set[str]:
        return {n for n, s in zip(names, skipped_files(contents, policy), strict=True) if s}

    assert skipped(InstallPolicy(install_langs=("Ca",))) == {"/usr/share/locale/de/LC_MESSAGES/docs.mo",
                                                            "/usr/share/locale/en/LC_MESSAGES/docs.mo"}
    assert skipped(InstallPolicy(netshared=("/srv/shared",))) == {"/srv/shared", "/srv/shared/data"}
    assert skipped(InstallPolicy(netshared=("/srv/shar",))) == set()
    assert Tag.FILELANGS in contents.header


# ---------------------------------------------------------------------------------------------------- %caps

CAP_TEXTS = ["cap_net_raw=ep", "=p", "all=ep", "cap_setuid,cap_net_admin+ep", "cap_chown=i cap_kill+p",
             "=ep cap_sys_admin-ep", "cap_net_raw=p", "CAP_SYS_NICE,7=eip", "cap_bpf+p cap_bpf+i",
             "cap_checkpoint_restore,cap_perfmon=ep", "cap_kill=p cap_net_raw+ep", "cap_chown=+p"]


def _setcap(path: Path, text: str) -> bytes | None:
    proc = subprocess.run(["setcap", text, str(path)], capture_output=True, text=True)
    if proc.returncode != 0:
        return None
    return os.getxattr(path, caps.XATTR)


@pytest.mark.skipif(shutil.which("setcap") is None or os.geteuid() != 0, reason="needs setcap as root")
@pytest.mark.parametrize("text", CAP_TEXTS)
def test_caps_encoding_is_setcaps(text: str, tmp_path: Path) -> None:
    target = tmp_path / "f"
    target.write_bytes(b"x")
    assert caps.vfs_cap_data(text) == _setcap(target, text)


def test_caps_refused_as_libcap_refuses() -> None:
    assert caps.vfs_cap_data("") is None
    with pytest.raises(caps.CapsError):
        caps.parse("cap_nonexistent=ep")
    with pytest.raises(caps.CapsError):
        caps.parse("+ep")


@pytest.mark.skipif(os.geteuid() != 0, reason="rpm sets capabilities only as root")
def test_caps_land_in_the_layer_as_rpm_sets_them(tmp_path: Path) -> None:
    """A package with %caps placed by copa and written as a layer: each file's PAX record holds the bytes that
    rpm -i (as root, through libcap) leaves in the file's security.capability."""
    files = (RpmFile("/usr/bin/ping2", b"\x7fELF ping", 0o755, caps="cap_net_raw=ep"),
             RpmFile("/usr/bin/both", b"\x7fELF both", 0o755, caps="cap_setuid,cap_net_bind_service=ep"),
             RpmFile("/usr/bin/inh", b"\x7fELF inh", 0o755, caps="cap_kill=ip"),
             RpmFile("/usr/bin/plain", b"\x7fELF plain", 0o755))
    rpm = build_rpm(RpmSpec("capped", "1.0", "1", files=files), tmp_path / "rpms")
    oracle = tmp_path / "oracle"
    init_root(oracle, [rpm])
    root = tmp_path / "root"
    (root / "usr/bin").mkdir(parents=True)
    layer = LayerPlan.of(rootview.view_of(root, CAPTURE), 1704067200)
    install_package(layer, read_rpm(rpm, tmp_path / "stage"), None, set())
    blob = write_layer(layer.entries.values(), tmp_path, compression=Compression.GZIP)
    with tarfile.open(blob.path) as tar:
        got = {m.name: m.pax_headers.get(caps.PAX_KEY) for m in tar.getmembers() if m.isfile()}
    for f in files:
        want = os.getxattr(oracle / f.path.lstrip("/"), caps.XATTR) if f.caps else None
        value = got[f.path.lstrip("/")]
        assert (value.encode("utf-8", "surrogateescape") if value is not None else None) == want, f.path
