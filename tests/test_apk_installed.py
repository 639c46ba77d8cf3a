"""The installed database: read and written back byte for byte, new records as apk-tools writes them."""

from __future__ import annotations

import hashlib

from copa.pkg.apk.apkfile import DataFile
from copa.pkg.apk.index import encode_hash
from copa.pkg.apk.installed import (
    InstalledPackage,
    format_installed,
    new_dirs,
    parse_installed,
    replace_packages,
)

# The layout apk-tools writes (header, r:, then F:/M:/R:/a:/Z:), as found in Alpine images.
DB = """C:Q1ZZqflKEvStJz4SXV0SDMi3wOtM0=
P:musl
V:1.2.3-r0
A:x86_64
S:383304
I:622592
T:the musl c library (libc) implementation
U:https://musl.libc.org/
L:MIT
o:musl
m:Timo Teräs <timo.teras@iki.fi>
t:1649396308
c:ee13d43a53938d8a04ba787b9423f3270a3c14a7
p:so:libc.musl-x86_64.so.1=1
F:lib
R:ld-musl-x86_64.so.1
a:0:0:755
Z:Q1ZZqflKEvStJz4SXV0SDMi3wOtM0=
R:libc.musl-x86_64.so.1
a:0:0:777
Z:Q17yJ3JFNypA4mxhJJr0ou6CzsJVI=

C:Q1iZ+C2JJdBlm2KKtAOkSkM7zZegY=
P:busybox
V:1.35.0-r17
A:x86_64
S:507831
I:962560
T:Size optimized toolbox of many common UNIX utilities
U:https://busybox.net/
L:GPL-2.0-only
o:busybox
m:Sören Tempel <soeren+alpine@soeren-tempel.net>
t:1659366884
c:2bf6ec48e526113f87216683cd341a78af5f0b3f
D:so:libc.musl-x86_64.so.1
p:/bin/sh cmd:busybox=1.35.0-r17 cmd:sh=1.35.0-r17
r:busybox-initscripts
F:bin
R:busybox
a:0:0:755
Z:Q1WUwBY0eOGgzgVxTZxJBZPyQUicI=
R:sh
a:0:0:777
Z:Q1pcfTfDNEbNKQc2s1tia7da05M8Q=
F:etc
R:securetty
Z:Q1mB95Hq2NUTZ599RDiSsj9w5FrOU=
F:tmp
M:0:0:1777
F:var/empty
M:0:0:555

"""


def test_round_trip_is_exact() -> None:
    packages = parse_installed(DB)
    assert [p.name for p in packages] == ["musl", "busybox"]
    assert format_installed(packages) == DB.encode()
    bb = packages[1]
    assert bb.paths() == ["bin/busybox", "bin/sh", "etc/securetty"]
    assert bb.record.provides[1].version == "1.35.0-r17"
    assert [d.acl for d in bb.dirs] == ["", "", "0:0:1777", "0:0:555"]


def test_symlink_digest_is_of_its_target() -> None:
    # apk records a symlink's Z: as the sha1 of the link target: check against the real record above.
    musl = parse_installed(DB)[0]
    link = musl.dirs[0].files[1]
    assert link.digest == encode_hash(hashlib.sha1(b"ld-musl-x86_64.so.1").digest())


def _f(path: str, kind: str, mode: int, data: bytes = b"", target: str = "", uid: int = 0) -> DataFile:
    digest = hashlib.sha1(target.encode() if kind == "symlink" else data).digest() if kind != "dir" else None
    return DataFile(path, kind, mode, uid, 0, "root", "root", 0, len(data), target, None, digest)


def test_new_dirs_as_apk_writes_them() -> None:
    files = [_f("lib", "dir", 0o755), _f("lib/ld-musl-x86_64.so.1", "file", 0o755, b"elf"),
             _f("lib/libc.musl-x86_64.so.1", "symlink", 0o777, target="ld-musl-x86_64.so.1"),
             _f("tmp", "dir", 0o1777), _f("etc", "dir", 0o755), _f("etc/conf", "file", 0o644, b"x", uid=100)]
    dirs = new_dirs(files, {"etc/conf": (100, 101)})
    text = format_installed([InstalledPackage((("P", "x"), ("V", "1")), dirs)]).decode()
    assert text == (
        "P:x\nV:1\nF:lib\nR:ld-musl-x86_64.so.1\na:0:0:755\n"
        f"Z:{encode_hash(hashlib.sha1(b'elf').digest())}\n"
        "R:libc.musl-x86_64.so.1\na:0:0:777\nZ:Q17yJ3JFNypA4mxhJJr0ou6CzsJVI=\n"
        "F:tmp\nM:0:0:1777\nF:etc\nR:conf\na:100:101:644\n"
        f"Z:{encode_hash(hashlib.sha1(b'x').digest())}\n\n"
    )


def _pkg(name: str) -> InstalledPackage:
    return InstalledPackage((("P", name), ("V", "1")), ())


def test_replace_keeps_apk3_sorting_or_apk2_install_order() -> None:
    sorted_db = [_pkg("alpine-baselayout"), _pkg("busybox"), _pkg("Zlib"), _pkg("zstd")]
    out = replace_packages(sorted_db, [_pkg("busybox"), _pkg("ca-certificates")])
    assert [p.name for p in out] == ["alpine-baselayout", "busybox", "ca-certificates", "Zlib", "zstd"]
    apk2_db = [_pkg("musl"), _pkg("busybox"), _pkg("alpine-baselayout")]
    out = replace_packages(apk2_db, [_pkg("busybox")])
    assert [p.name for p in out] == ["musl", "alpine-baselayout", "busybox"]


def test_real_alpine_database_round_trips() -> None:
    from tests.support.alpine import alpine_rootfs

    root = alpine_rootfs()
    for path in ("lib/apk/db/installed", "usr/lib/apk/db/installed"):
        if (root / path).is_file():
            raw = (root / path).read_bytes()
            break
    packages = parse_installed(raw.decode())
    assert {"musl", "busybox", "apk-tools"} <= {p.name for p in packages}
    assert format_installed(packages) == raw
