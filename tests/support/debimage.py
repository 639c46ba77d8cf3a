"""A tiny Debian-like image whose dpkg state is real, and the hermetic repository that upgrades it.

    repo = hermetic_repo()            # signed apt repo (tests/support/aptrepo.py) with 1.0 and 2.0 of every package
    base = base_image()               # rootfs + OCI layout: the 1.0 packages installed by the real `dpkg --root -i`
    with RepoServer(repo.root) as server:
        copa patch -i base.image_ref --mirror f"{REPO_URL}={server.url}" --keyring repo.key.keyring ...
    oracle = dpkg_oracle(base.rootfs, tmp / "oracle", [repo.deb("app", "2.0"), ...])   # what real dpkg makes

The image is a merged-/usr skeleton (bin -> usr/bin ...) with Debian 12's os-release, an empty dpkg database
filled by dpkg itself, one hold set with `dpkg --set-selections`, and conffiles edited/deleted by "the admin"
after installation. Its apt source names REPO_URL, a host that cannot resolve: tests map it onto the local
server with --mirror, so the cached image does not depend on the server's port. The image is cached under
~/.cache/copa-tests/ keyed by the package specs; the repository is rebuilt once per process (about a second)
because its signing key is throwaway.
"""

from __future__ import annotations

import atexit
import dataclasses
import functools
import json
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.support import images
from tests.support.aptrepo import AptRepo, DebSpec, build_deb, build_repo, make_key

SCHEMA = 1  # bump when the image layout below changes: it is part of the cache key
REF = "hermetic"
REPO_URL = "http://repo.copa-test.invalid/debian"
SUITE = "stable"

OS_RELEASE = """PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"
NAME="Debian GNU/Linux"
VERSION_ID="12"
VERSION="12 (bookworm)"
VERSION_CODENAME=bookworm
ID=debian
"""

# Conffiles of `conf`, and what the image's admin did to them after installing 1.0.
CONF_EDITED = "/etc/conf/edited.conf"  # edited in the image, changed by 2.0 -> kept, 2.0 beside it as .dpkg-dist
CONF_SAME = "/etc/conf/same.conf"  # edited in the image, unchanged by 2.0 -> kept, nothing beside it
CONF_PRISTINE = "/etc/conf/pristine.conf"  # untouched in the image, changed by 2.0 -> replaced
CONF_DELETED = "/etc/conf/deleted.conf"  # deleted in the image, changed by 2.0 -> whatever dpkg does
CONFFILES = (CONF_EDITED, CONF_SAME, CONF_PRISTINE, CONF_DELETED)
ADMIN_EDIT = "# edited by the image's admin\n"

HELD = "held"
MISSING_FIX = "ghost"  # installed at 1.0; the repository has nothing newer


def _conf(version: str) -> DebSpec:
    changed = {p: f"# {p} shipped by conf {version}\nkey = {version}\n" for p in (CONF_EDITED, CONF_PRISTINE,
                                                                                   CONF_DELETED)}
    files: dict[str, bytes | str] = {p.lstrip("/"): text for p, text in changed.items()}
    files[CONF_SAME.lstrip("/")] = "# same in every version\n"
    files["usr/share/doc/conf/README"] = f"conf {version}\n"
    return DebSpec("conf", version, files=files, conffiles=CONFFILES)


def _foo(version: str) -> list[DebSpec]:
    lib = DebSpec("libfoo1", version, files={"usr/lib/x86_64-linux-gnu/libfoo.so.1": f"libfoo {version}\n"},
                  control={"Source": "foo", "Multi-Arch": "same"})
    tools = DebSpec("foo-tools", version, files={"usr/bin/foo": f"#!/bin/sh\necho foo {version}\n"},
                    control={"Source": "foo", "Depends": f"libfoo1 (= {version})"})
    return [lib, tools]


def _held(version: str) -> DebSpec:
    return DebSpec(HELD, version, files={"usr/share/held/version": f"{version}\n"})


# What the image has installed: every package at 1.0.
INSTALLED: tuple[DebSpec, ...] = (
    # bin/app goes through the image's bin -> usr/bin symlink, as on every merged-/usr Debian.
    DebSpec("app", "1.0", files={"bin/app": "#!/bin/sh\necho app 1.0\n", "usr/share/app/keep.txt": "keep 1.0\n",
                                 "usr/share/app/old.txt": "only in 1.0\n"}),
    _conf("1.0"),
    *_foo("1.0"),
    _held("1.0"),
    DebSpec(MISSING_FIX, "1.0", files={"usr/share/ghost/version": "1.0\n"}),
)

# What the repository adds: 2.0 of everything but ghost, and libnew, which app 2.0 newly needs.
UPGRADES: tuple[DebSpec, ...] = (
    DebSpec("app", "2.0", control={"Depends": "libnew (>= 2.0)"},
            files={"bin/app": "#!/bin/sh\necho app 2.0\n", "usr/share/app/keep.txt": "keep 2.0\n",
                   "usr/share/app/new.txt": "new in 2.0\n"}),
    DebSpec("libnew", "2.0", files={"usr/lib/x86_64-linux-gnu/libnew.so.2": "libnew 2.0\n"}),
    _conf("2.0"),
    *_foo("2.0"),
    _held("2.0"),
)

# The report the main hermetic case patches with: name -> (installed, fixed).
FIXES: dict[str, tuple[str, str]] = {
    "app": ("1.0", "2.0"),
    "conf": ("1.0", "2.0"),
    "libfoo1": ("1.0", "2.0"),  # foo-tools is not named: it must follow through its (= version) pin
    HELD: ("1.0", "2.0"),
    MISSING_FIX: ("1.0", "9.0"),
}

# What dpkg is given for the oracle: the packages apt would install for FIXES (ghost has no fix, held is held).
ORACLE_DEBS: tuple[tuple[str, str], ...] = (
    ("app", "2.0"), ("libnew", "2.0"), ("conf", "2.0"), ("libfoo1", "2.0"), ("foo-tools", "2.0"),
)


@dataclass(frozen=True)
class BaseImage:
    rootfs: Path  # shared, read-only: copy it (copy_rootfs) before changing anything
    layout: Path  # shared, read-only OCI layout holding image `ref`
    ref: str = REF

    @property
    def image_ref(self) -> str:
        return f"oci:{self.layout}:{self.ref}"


def run(argv: Sequence[str], what: str) -> str:
    proc = subprocess.run(list(argv), capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise AssertionError(f"{what} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout


def _skeleton(root: Path) -> None:
    for d in ("usr/bin", "usr/sbin", "usr/lib", "usr/lib64", "usr/share", "etc/apt/sources.list.d", "tmp",
              "var/lib/dpkg/info", "var/lib/dpkg/updates", "var/lib/dpkg/triggers", "var/lib/dpkg/alternatives"):
        (root / d).mkdir(parents=True, exist_ok=True)
    for link in ("bin", "sbin", "lib", "lib64"):
        (root / link).symlink_to(f"usr/{link}")
    (root / "usr/lib/os-release").write_text(OS_RELEASE)
    (root / "etc/os-release").symlink_to("../usr/lib/os-release")
    (root / "var/lib/dpkg/status").write_bytes(b"")
    (root / "etc/apt/sources.list.d/copa-test.list").write_text(f"deb {REPO_URL} {SUITE} main\n")


def dpkg_install(root: Path, debs: Iterable[Path], *extra: str) -> None:
    """The real dpkg installing `debs` into `root` (no maintainer scripts in our packages: nothing to chroot)."""
    run(["dpkg", f"--root={root}", "--force-confold", *extra, "-i", *map(str, debs)], f"dpkg -i into {root}")


def _build_image(entry: Path) -> None:
    root = entry / "rootfs"
    root.mkdir()
    _skeleton(root)
    debs = [build_deb(spec, entry / "debs") for spec in INSTALLED]
    dpkg_install(root, debs)
    subprocess.run(["dpkg", f"--root={root}", "--set-selections"], input=f"{HELD} hold\n", text=True, check=True,
                   capture_output=True)
    (root / CONF_EDITED.lstrip("/")).write_text(ADMIN_EDIT)
    (root / CONF_SAME.lstrip("/")).write_text(ADMIN_EDIT)
    (root / CONF_DELETED.lstrip("/")).unlink()
    for lock in ("lock", "lock-frontend"):
        (root / "var/lib/dpkg" / lock).unlink(missing_ok=True)
    shutil.rmtree(entry / "debs")
    images.builder.make_oci_layout(root, entry / "layout", REF, cmd=None)


def _spec_doc(spec: DebSpec) -> dict[str, object]:
    doc = dataclasses.asdict(spec)
    doc["files"] = {k: v if isinstance(v, str) else v.hex() for k, v in spec.files.items()}
    return doc


@functools.cache
def base_image() -> BaseImage:
    params = {"schema": SCHEMA, "installed": [_spec_doc(s) for s in INSTALLED], "held": HELD,
              "conffiles": [CONF_EDITED, CONF_SAME, CONF_DELETED, ADMIN_EDIT], "os_release": OS_RELEASE,
              "repo_url": REPO_URL}
    entry = images.builder.cached("debimage", json.loads(json.dumps(params)), _build_image)
    return BaseImage(entry / "rootfs", entry / "layout")


def _tempdir(prefix: str) -> Path:
    path = Path(tempfile.mkdtemp(prefix=prefix))
    atexit.register(shutil.rmtree, path, True)
    return path


@functools.cache
def hermetic_repo() -> AptRepo:
    """The signed repository with every INSTALLED and UPGRADES package (built once per process)."""
    tmp = _tempdir("copa-hermetic-repo-")
    key = make_key(tmp / "key")
    return build_repo(tmp / "repo", [*INSTALLED, *UPGRADES], key=key, suite=SUITE)


def copy_rootfs(rootfs: Path, dest: Path) -> Path:
    run(["cp", "-a", str(rootfs), str(dest)], f"copying {rootfs}")
    return dest


def dpkg_oracle(base: Path, dest: Path, debs: Sequence[Path]) -> Path:
    """A copy of `base` upgraded by the real dpkg (confold: an edited conffile is kept), as apt would run it."""
    copy_rootfs(base, dest)
    dpkg_install(dest, debs)
    return dest


def copa_args(server_url: str, repo: AptRepo) -> list[str]:
    """The flags that point copa at the local server and trust the repository's key."""
    return ["--mirror", f"{REPO_URL}={server_url}", "--keyring", str(repo.key.keyring) if repo.key else ""]


def unpack_layout(layout: Path, ref: str, dest: Path) -> Path:
    """umoci unpack (which verifies every blob digest); returns the rootfs."""
    run(["umoci", "unpack", "--image", f"{layout}:{ref}", str(dest)], f"umoci unpack {layout}:{ref}")
    return dest / "rootfs"


# Files of the dpkg database that depend on when and how dpkg ran rather than on what it installed.
VOLATILE = frozenset({"var/lib/dpkg/status-old", "var/lib/dpkg/lock", "var/lib/dpkg/lock-frontend",
                      "var/lib/dpkg/triggers/Lock", "var/lib/dpkg/triggers/Unincorp"})


@dataclass(frozen=True, slots=True)
class Node:
    kind: str  # file, dir, symlink
    mode: int
    uid: int
    gid: int
    content: str  # file sha-free content (tiny files) or link target


def tree(root: Path, skip: frozenset[str] = VOLATILE) -> dict[str, Node]:
    """Every path under `root` with its type, permission bits, owner and content (the files here are tiny)."""
    out: dict[str, Node] = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if rel in skip:
            continue
        st = path.lstat()
        if path.is_symlink():
            node = Node("symlink", 0, st.st_uid, st.st_gid, str(path.readlink()))
        elif path.is_dir():
            node = Node("dir", st.st_mode & 0o7777, st.st_uid, st.st_gid, "")
        else:
            node = Node("file", st.st_mode & 0o7777, st.st_uid, st.st_gid,
                        path.read_bytes().decode("utf-8", "backslashreplace"))
        out[rel] = node
    return out


def tree_diff(got: Mapping[str, Node], want: Mapping[str, Node]) -> list[str]:
    """Human-readable differences (empty when equal)."""
    lines = []
    for path in sorted(set(got) | set(want)):
        a, b = got.get(path), want.get(path)
        if a != b:
            lines.append(f"{path}: patched={a} dpkg={b}")
    return lines


# --------------------------------------------------------------------------------------------- dpkg configuration
# A second image for what the image's dpkg configuration changes about an upgrade: diversions and path filters.
#
#   man       /usr/bin/man and /usr/bin/old-man diverted by the admin (local, --rename) to *.REAL, a stub in their
#             place, as Ubuntu's minimized images do; 2.0 must land in man.REAL, and dropping old-man removes
#             old-man.REAL, not the stub.
#   victim    /usr/bin/tool diverted to /usr/bin/tool.victim by the package `diverter`, which ships its own
#             /usr/bin/tool: victim's file goes to tool.victim, diverter's own to tool.
#   docs      docs, man pages and translations, installed before the slim image's path filters were set up.

QUIRKS_REF = "quirks"
QUIRKS_FILTERS = """# as in debian:bookworm-slim (/etc/dpkg/dpkg.cfg.d/docker)
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude=/usr/share/locale/*
"""
# dpkg ignores config files whose names have a dot (dpkg_options_load_dir): this one must change nothing.
QUIRKS_IGNORED_CFG = ("etc/dpkg/dpkg.cfg.d/docker.dpkg-old", "path-include /usr/share/man/*\n")


def _quirk_specs(version: str) -> list[DebSpec]:
    man_files: dict[str, bytes | str] = {"usr/bin/man": f"man {version}\n",
                                         "usr/share/man/man1/man.1": f"man page {version}\n"}
    if version == "1.0":
        man_files["usr/bin/old-man"] = "old-man 1.0\n"
    return [
        DebSpec("man", version, files=man_files),
        # (a second file: dpkg deems a package whose every file another package took over gone, a case copa skips)
        DebSpec("victim", version, files={"usr/bin/tool": f"victim's tool {version}\n",
                                          "usr/share/victim/data": f"victim {version}\n"}),
        DebSpec("diverter", version, files={"usr/bin/tool": f"diverter's tool {version}\n"}),
        DebSpec("docs", version, files={
            "usr/bin/docs": f"docs {version}\n",
            "usr/share/doc/docs/README": f"readme {version}\n",
            "usr/share/doc/docs/copyright": f"copyright {version}\n",
            "usr/share/man/man1/docs.1": f"docs page {version}\n",
            "usr/share/locale/de/LC_MESSAGES/docs.mo": f"mo {version}\n",
        }),
    ]


QUIRKS_INSTALLED: tuple[DebSpec, ...] = tuple(_quirk_specs("1.0"))
QUIRKS_UPGRADES: tuple[DebSpec, ...] = tuple(_quirk_specs("2.0"))
QUIRKS_FIXES: dict[str, tuple[str, str]] = {s.name: ("1.0", "2.0") for s in QUIRKS_INSTALLED}
STUB = "#!/bin/sh\necho 'this image is minimized'\n"


def _divert(root: Path, path: str, divert_to: str, package: str | None = None) -> None:
    who = ["--package", package] if package else ["--local"]
    run(["dpkg-divert", f"--root={root}", *who, "--add", "--rename", "--divert", divert_to, path],
        f"dpkg-divert {path}")


def _build_quirks_image(entry: Path) -> None:
    root = entry / "rootfs"
    root.mkdir()
    _skeleton(root)
    debs = {spec.name: build_deb(spec, entry / "debs") for spec in QUIRKS_INSTALLED}
    dpkg_install(root, [debs["man"], debs["victim"], debs["docs"]])
    for name in ("man", "old-man"):
        _divert(root, f"/usr/bin/{name}", f"/usr/bin/{name}.REAL")
        (root / "usr/bin" / name).write_text(STUB)
        (root / "usr/bin" / name).chmod(0o755)
    _divert(root, "/usr/bin/tool", "/usr/bin/tool.victim", package="diverter")
    dpkg_install(root, [debs["diverter"]])
    cfg = root / "etc/dpkg/dpkg.cfg.d"
    cfg.mkdir(parents=True)
    (cfg / "docker").write_text(QUIRKS_FILTERS)
    (root / QUIRKS_IGNORED_CFG[0]).write_text(QUIRKS_IGNORED_CFG[1])
    for lock in ("lock", "lock-frontend"):
        (root / "var/lib/dpkg" / lock).unlink(missing_ok=True)
    shutil.rmtree(entry / "debs")
    images.builder.make_oci_layout(root, entry / "layout", QUIRKS_REF, cmd=None)


@functools.cache
def quirks_image() -> BaseImage:
    params = {"schema": SCHEMA, "installed": [_spec_doc(s) for s in QUIRKS_INSTALLED], "filters": QUIRKS_FILTERS,
              "ignored": list(QUIRKS_IGNORED_CFG), "stub": STUB, "os_release": OS_RELEASE, "repo_url": REPO_URL}
    entry = images.builder.cached("debimage-quirks", json.loads(json.dumps(params)), _build_quirks_image)
    return BaseImage(entry / "rootfs", entry / "layout", QUIRKS_REF)


@functools.cache
def quirks_repo() -> AptRepo:
    tmp = _tempdir("copa-quirks-repo-")
    return build_repo(tmp / "repo", [*QUIRKS_INSTALLED, *QUIRKS_UPGRADES], key=make_key(tmp / "key"), suite=SUITE)


def dpkg_oracle_with_image_config(base: Path, dest: Path, debs: Sequence[Path]) -> Path:
    """Like dpkg_oracle, but dpkg reads its configuration (path filters) from the image's /etc/dpkg, as it would
    running inside the image: `--root` does not move the configuration directory, so the image's is bind-mounted
    over the host's in a private mount namespace."""
    copy_rootfs(base, dest)
    argv = ["dpkg", f"--root={dest}", "--force-confold", "-i", *map(str, debs)]
    script = 'mount --bind "$1/etc/dpkg" /etc/dpkg && shift && exec "$@"'
    run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", str(dest), *argv],
        f"dpkg -i into {dest} with its own configuration")
    return dest
