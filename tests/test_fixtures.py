"""The fixture images are what they claim to be, checked with dpkg, umoci and md5sum rather than our own code."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support import images, mirror
from tests.support.mirror import MirrorNotFoundError, find_mirror
from tests.support.registry import RunningRegistry

# ------------------------------------------------------------------------------------------ mirror discovery


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_mirror_from_deb822_and_one_line_sources(tmp_path: Path) -> None:
    _write(
        tmp_path / "sources.list.d/debian.sources",
        "Types: deb\n# a comment\nURIs: http://main.invalid/debian/\nSuites: bookworm bookworm-updates\n"
        "Components: main\nSigned-By: /k.gpg\n\nTypes: deb-src\nURIs: http://src.invalid/debian\n"
        "Suites: bookworm-security\nComponents: main\n",
    )
    _write(
        tmp_path / "sources.list.d/sec.list",
        "deb [signed-by=/k.gpg arch=amd64] http://sec.invalid/ds bookworm-security main\n",
    )
    _write(tmp_path / "sources.list.d/off.list.disabled", "deb http://wrong.invalid/x bookworm main\n")
    assert find_mirror("bookworm", etc=tmp_path) == "http://main.invalid/debian"
    assert find_mirror("bookworm-security", etc=tmp_path) == "http://sec.invalid/ds"  # deb-src does not count
    with pytest.raises(MirrorNotFoundError, match="bullseye"):
        find_mirror("bullseye", etc=tmp_path)


def test_disabled_deb822_source_is_ignored(tmp_path: Path) -> None:
    _write(
        tmp_path / "sources.list.d/a.sources",
        "Enabled: no\nTypes: deb\nURIs: http://off.invalid\nSuites: bookworm\nComponents: main\n",
    )
    _write(tmp_path / "sources.list", "deb http://on.invalid/debian bookworm main contrib\n")
    assert find_mirror("bookworm", etc=tmp_path) == "http://on.invalid/debian"


def test_mirror_env_overrides_apt(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COPA_DEBIAN_MIRROR", "http://env.invalid/debian/")
    monkeypatch.setenv("COPA_SECURITY_MIRROR", "http://env.invalid/sec")
    assert mirror.debian_mirror() == "http://env.invalid/debian"
    assert mirror.security_mirror() == "http://env.invalid/sec"


def test_this_machine_has_both_mirrors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("COPA_DEBIAN_MIRROR", raising=False)
    monkeypatch.delenv("COPA_SECURITY_MIRROR", raising=False)
    assert mirror.debian_mirror().startswith(("http://", "https://"))
    assert mirror.security_mirror().startswith(("http://", "https://"))


# ------------------------------------------------------------------------------------------ helpers


def _run(*argv: str | Path) -> str:
    proc = subprocess.run([str(a) for a in argv], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, f"{argv} failed: {proc.stderr}"
    return proc.stdout


def _installed(root: Path) -> dict[str, str]:
    out = _run("dpkg-query", f"--root={root}", "-W", "-f=${Package}\t${Version}\t${db:Status-Abbrev}\n")
    rows = [line.split("\t") for line in out.splitlines()]
    return {name: version for name, version, status in rows if status.strip() == "ii"}


def _tree(root: Path) -> dict[str, tuple[object, ...]]:
    """path -> (type, permission bits, uid, gid, size or link target) for every entry under root."""
    found: dict[str, tuple[object, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath, name)
            st = path.lstat()
            extra: object = (
                os.readlink(path) if stat.S_ISLNK(st.st_mode) else (st.st_size if stat.S_ISREG(st.st_mode) else 0)
            )
            found[str(path.relative_to(root))] = (
                stat.S_IFMT(st.st_mode),
                stat.S_IMODE(st.st_mode),
                st.st_uid,
                st.st_gid,
                extra,
            )
    return found


def _unpack(layout: tuple[Path, str], dest: Path) -> Path:
    _run("umoci", "unpack", f"--image={layout[0]}:{layout[1]}", dest)
    return dest / "rootfs"


def _manifest_and_config(layout: tuple[Path, str]) -> tuple[dict[str, object], dict[str, object], str]:
    index = json.loads((layout[0] / "index.json").read_text())
    (desc,) = [m for m in index["manifests"] if m["annotations"]["org.opencontainers.image.ref.name"] == layout[1]]
    blob = layout[0] / "blobs" / "sha256"
    manifest = json.loads((blob / desc["digest"].split(":")[1]).read_text())
    config = json.loads((blob / manifest["config"]["digest"].split(":")[1]).read_text())
    return manifest, config, desc["digest"]


@pytest.fixture(scope="module", autouse=False)
def timed_builds() -> dict[str, float]:
    """Build every image once (slow the first time on a machine) and report how long each took."""
    times: dict[str, float] = {}
    builds: list[tuple[str, Callable[[], Path]]] = [
        ("debian rootfs", images.debian_rootfs),
        ("oracle rootfs", images.oracle_rootfs),
        ("distroless rootfs", images.distroless_rootfs),
        ("debian layout", lambda: images.debian_layout()[0]),
        ("oracle layout", lambda: images.oracle_layout()[0]),
        ("distroless layout", lambda: images.distroless_layout()[0]),
        ("two-layer layout", lambda: images.two_layer_layout()[0]),
    ]
    for name, get in builds:
        start = time.monotonic()
        path = get()
        times[name] = images.build_seconds(path)
        print(f"{name}: built in {times[name]:.1f}s (this run waited {time.monotonic() - start:.1f}s) at {path}")
    return times


# ------------------------------------------------------------------------------------------ the images


@pytest.mark.slow
def test_debian_rootfs_is_a_bookworm_image_with_openssl(timed_builds: dict[str, float]) -> None:
    root = images.debian_rootfs()
    listing = _run("dpkg", f"--root={root}", "-l", "openssl")
    assert any(line.startswith("ii  openssl ") for line in listing.splitlines()), listing
    assert _run("dpkg", f"--root={root}", "--audit") == ""
    assert (root / "etc/debian_version").read_text().startswith("12.")
    sources = (root / "etc/apt/sources.list.d/debian.sources").read_text()
    assert f"URIs: {mirror.debian_mirror()}\nSuites: bookworm bookworm-updates\n" in sources
    assert f"URIs: {mirror.security_mirror()}\nSuites: bookworm-security\n" in sources
    assert sources.count("Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg") == 2
    assert (root / "usr/share/keyrings/debian-archive-keyring.gpg").is_file()
    assert not (root / "etc/apt/sources.list").exists()
    assert list((root / "var/lib/apt/lists").iterdir()) == []
    assert list((root / "var/cache/apt").iterdir()) == []
    assert list((root / "dev").iterdir()) == []


@pytest.mark.slow
def test_oracle_has_security_updates_for_the_base(timed_builds: dict[str, float]) -> None:
    assert _run("dpkg", f"--root={images.oracle_rootfs()}", "--audit") == ""
    base, oracle = _installed(images.debian_rootfs()), _installed(images.oracle_rootfs())
    assert set(base) == set(oracle), "the oracle must hold the same package set"
    newer = []
    for name, version in base.items():
        if version == oracle[name]:
            continue
        older = subprocess.run(["dpkg", "--compare-versions", version, "lt", oracle[name]], check=False)
        assert older.returncode == 0, f"{name}: oracle {oracle[name]} is not newer than base {version}"
        newer.append(name)
    print(f"oracle upgrades {len(newer)} packages: {', '.join(sorted(newer))}")
    assert newer, "bookworm-security has no newer package than the point release; the patch tests would be vacuous"


@pytest.mark.slow
def test_layout_unpacks_to_the_rootfs(tmp_path: Path, timed_builds: dict[str, float]) -> None:
    layout = images.debian_layout()
    manifest, config, _ = _manifest_and_config(layout)
    assert len(manifest["layers"]) == 1  # type: ignore[arg-type]
    assert (config["os"], config["architecture"]) == ("linux", "amd64")
    assert config["config"]["Cmd"] == ["bash"]  # type: ignore[index]
    unpacked = _unpack(layout, tmp_path / "bundle")
    expected, got = _tree(images.debian_rootfs()), _tree(unpacked)
    assert sorted(set(expected) ^ set(got)) == []
    differing = [p for p in expected if expected[p] != got[p]]
    assert differing == [], [(p, expected[p], got[p]) for p in differing[:5]]
    for rel in ("usr/bin/openssl", "etc/apt/sources.list.d/debian.sources", "etc/passwd"):
        assert (
            hashlib.sha256((unpacked / rel).read_bytes()).digest()
            == hashlib.sha256((images.debian_rootfs() / rel).read_bytes()).digest()
        )


@pytest.mark.slow
def test_distroless_has_status_d_and_no_package_tools(tmp_path: Path, timed_builds: dict[str, float]) -> None:
    root = images.distroless_rootfs()
    status_d = root / "var/lib/dpkg/status.d"
    assert sorted(p.name for p in (root / "var/lib/dpkg").iterdir()) == ["status.d"]
    for gone in ("etc/apt", "usr/bin/dpkg", "usr/bin/apt-get", "usr/share/keyrings/debian-archive-keyring.gpg"):
        assert not (root / gone).exists(), gone
    names = {p.name for p in status_d.iterdir() if not p.name.endswith(".md5sums")}
    assert names == set(_installed(images.debian_rootfs())) - {"dpkg", "apt", "debian-archive-keyring"}
    libssl = (status_d / "libssl3").read_text()
    assert libssl.startswith("Package: libssl3\nStatus: install ok installed\n")
    # The copied md5sums must describe the files actually in the image (md5sum is the oracle).
    proc = subprocess.run(
        ["md5sum", "--check", "--quiet", str(status_d / "libssl3.md5sums")], cwd=root, capture_output=True, check=False
    )
    assert proc.returncode == 0, proc.stdout
    unpacked = _unpack(images.distroless_layout(), tmp_path / "bundle")
    assert (unpacked / "var/lib/dpkg/status.d/openssl").is_file()
    assert not (unpacked / "var/lib/dpkg/status").exists()
    assert "Cmd" not in _manifest_and_config(images.distroless_layout())[1]["config"]  # type: ignore[operator]


@pytest.mark.slow
def test_two_layer_merged_view(tmp_path: Path, timed_builds: dict[str, float]) -> None:
    layout = images.two_layer_layout()
    manifest, config, _ = _manifest_and_config(layout)
    base_manifest, _, _ = _manifest_and_config(images.debian_layout())
    assert len(manifest["layers"]) == 2  # type: ignore[arg-type]
    assert manifest["layers"][0] == base_manifest["layers"][0]  # type: ignore[index]
    assert len(config["rootfs"]["diff_ids"]) == 2  # type: ignore[index]
    merged = _unpack(layout, tmp_path / "bundle")  # umoci applies the whiteouts: it is the oracle here
    base = images.debian_rootfs()
    assert (merged / images.TWO_LAYER_ADDED).read_bytes() == images.TWO_LAYER_ADDED_CONTENT
    assert (merged / images.TWO_LAYER_CHANGED).read_bytes() == images.TWO_LAYER_CHANGED_CONTENT
    assert (base / images.TWO_LAYER_DELETED).exists() and not (merged / images.TWO_LAYER_DELETED).exists()
    assert len(list((base / images.TWO_LAYER_OPAQUE_DIR).iterdir())) > 1
    assert [p.name for p in (merged / images.TWO_LAYER_OPAQUE_DIR).iterdir()] == [".profile"]
    assert (merged / images.TWO_LAYER_OPAQUE_KEPT).read_bytes() == images.TWO_LAYER_OPAQUE_CONTENT


@pytest.mark.slow
def test_cached_build_is_a_noop(timed_builds: dict[str, float]) -> None:
    start = time.monotonic()
    layout = images.builder.layout(images.builder.DEBIAN, images.DEBIAN_REF)
    assert layout == images.debian_layout()[0]
    assert time.monotonic() - start < 2


@pytest.mark.slow
def test_layout_step_is_reproducible(tmp_path: Path, timed_builds: dict[str, float]) -> None:
    images.builder.make_oci_layout(images.debian_rootfs(), tmp_path / "again", images.DEBIAN_REF)
    assert (
        _manifest_and_config((tmp_path / "again", images.DEBIAN_REF))[2]
        == _manifest_and_config(images.debian_layout())[2]
    )


class _Sha256Sink:
    def __init__(self) -> None:
        self.hash = hashlib.sha256()

    def write(self, data: bytes) -> int:
        self.hash.update(data)
        return len(data)


@pytest.mark.slow
@pytest.mark.live
def test_rootfs_build_is_byte_reproducible(tmp_path: Path, timed_builds: dict[str, float]) -> None:
    """A fresh mmdebstrap with the same SOURCE_DATE_EPOCH gives the same layer tar (~30 s)."""
    fresh = tmp_path / "rootfs"
    images.builder.build_rootfs(fresh)
    digests = []
    for root in (images.debian_rootfs(), fresh):
        sink = _Sha256Sink()
        images.builder.write_layer_tar(root, sink)
        digests.append(sink.hash.hexdigest())
    assert digests[0] == digests[1]


@pytest.mark.slow
def test_push_layout_in_both_formats(anon_registry: RunningRegistry, timed_builds: dict[str, float]) -> None:
    layout = images.debian_layout()
    pushed = images.push_layout(*layout, anon_registry.host, "fixtures/debian:oci")
    assert pushed == _manifest_and_config(layout)[2]  # same manifest bytes: nothing was rewritten
    v2 = images.push_layout(*layout, anon_registry.host, "fixtures/debian:v2s2", fmt="v2s2")
    raw = _run(
        "skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{anon_registry.host}/fixtures/debian:v2s2"
    )
    assert json.loads(raw)["mediaType"] == "application/vnd.docker.distribution.manifest.v2+json"
    assert v2 == "sha256:" + hashlib.sha256(raw.encode()).hexdigest()
