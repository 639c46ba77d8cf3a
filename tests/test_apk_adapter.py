"""The apk plan (pure) and the layer it builds, on packages and images built here."""

from __future__ import annotations

import gzip
import io
import tarfile
from pathlib import Path

from copa.oci.layer import Kind
from copa.oci.rootfs import Node, View
from copa.pkg.apk.apkfile import read_apk
from copa.pkg.apk.index import ApkRecord, parse_index
from copa.pkg.apk.install import Installing, LayerPlan, database_entries, install_package
from copa.pkg.apk.installed import parse_installed
from copa.pkg.apk.plan import Installed, Wanted, resolve
from copa.pkg.base import SkipReason, UpdateKind
from tests.test_apk_index import DataEntry, make_apk, signing_key


def _rec(name: str, version: str, origin: str = "", depends: str = "", provides: str = "", install_if: str = ""
         ) -> ApkRecord:
    text = f"C:Q1AAAAAAAAAAAAAAAAAAAAAAAAAAA=\nP:{name}\nV:{version}\nA:x86_64\no:{origin or name}\n"
    text += f"D:{depends}\n" if depends else ""
    text += f"p:{provides}\n" if provides else ""
    text += f"i:{install_if}\n" if install_if else ""
    return parse_index(text, "https://r")[0]


def _inst(r: ApkRecord) -> Installed:
    return Installed(r.name, r.version, r.origin, r.depends, r.provides, r.install_if)


def test_plan_reported_dependencies_and_siblings() -> None:
    old = [_rec("libcrypto3", "3.5.1-r0", "openssl", provides="so:libcrypto.so.3=3"),
           _rec("libssl3", "3.5.1-r0", "openssl", depends="so:libcrypto.so.3 libcrypto3=3.5.1-r0",
                provides="so:libssl.so.3=3"),
           _rec("curl", "8.14.1-r0", depends="so:libssl.so.3"), _rec("zlib", "1.3.1-r2", provides="so:libz.so.1=1.3.1")]
    installed = {r.name: _inst(r) for r in old}
    available = [*old,
                 _rec("libcrypto3", "3.5.4-r0", "openssl", depends="so:libz.so.1>=1.3.1",
                      provides="so:libcrypto.so.3=3"),
                 _rec("libssl3", "3.5.4-r0", "openssl", depends="so:libcrypto.so.3 libcrypto3=3.5.4-r0",
                      provides="so:libssl.so.3=3"),
                 _rec("libzz", "1.0-r0", provides="so:libz.so.1=1.3.2"),
                 _rec("curl", "8.17.0-r0", depends="so:libssl.so.3")]
    res = resolve(installed, [Wanted("libcrypto3", "3.5.2-r0", ("CVE-1",)), Wanted("bash", "5.0"),
                              Wanted("zlib", "1.3.1-r1")], available)
    got = {c.record.name: (c.record.version, c.kind) for c in res.chosen}
    # libssl3 pins libcrypto3 with '=': it moves along; the new so:libz dependency is met by the installed
    # zlib, so the other provider stays out; curl's dependencies still hold, so it stays.
    assert got["libcrypto3"] == ("3.5.4-r0", UpdateKind.REPORTED)
    assert got["libssl3"] == ("3.5.4-r0", UpdateKind.SIBLING)
    assert "curl" not in got and "libzz" not in got
    assert {s.name: s.reason for s in res.skipped} == {"bash": SkipReason.NOT_INSTALLED,
                                                      "zlib": SkipReason.ALREADY_FIXED}
    assert res.failures == ()


def test_plan_unavailable_fix_fails() -> None:
    r = _rec("musl", "1.2.5-r9")
    res = resolve({"musl": _inst(r)}, [Wanted("musl", "1.2.5-r10")], [r])
    assert [f.reason for f in res.failures] == [SkipReason.NO_FIX_AVAILABLE] and res.chosen == ()


def _db_tar(entries: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in entries.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o755
            tar.addfile(info, io.BytesIO(data))
    return gzip.compress(buf.getvalue(), mtime=0)


def test_layer_replaces_files_database_and_scripts(tmp_path: Path) -> None:
    key = signing_key()
    old_apk = make_apk("tool", "1.0-r0", [DataEntry("usr", kind="dir", mode=0o755),
                                           DataEntry("usr/bin", kind="dir", mode=0o755),
                                           DataEntry("usr/bin/tool", b"old", mode=0o755),
                                           DataEntry("usr/bin/gone", b"bye", mode=0o755),
                                           DataEntry("etc/tool.conf", b"conf1")], key=key)
    new_apk = make_apk("tool", "1.1-r0", [DataEntry("usr", kind="dir", mode=0o755),
                                           DataEntry("usr/bin", kind="dir", mode=0o755),
                                           DataEntry("usr/bin/tool", b"new", mode=0o755),
                                           DataEntry("usr/share/tool", kind="dir", mode=0o755),
                                           DataEntry("etc/tool.conf", b"conf2")],
                       key=key, scripts={".post-upgrade": b"#!/bin/sh\necho up\n"})
    old_id = old_apk.checksum
    import base64

    old_hex = base64.b64decode(old_id[2:]).hex()
    installed_text = (f"C:{old_id}\nP:tool\nV:1.0-r0\nA:x86_64\nS:1\nI:1\nT:t\nU:u\nL:MIT\nF:usr/bin\nR:tool\n"
                      "a:0:0:755\nZ:Q1AAAAAAAAAAAAAAAAAAAAAAAAAAA=\nR:gone\na:0:0:755\nZ:Q1AAAAAAAAAAAAAAAAAAAAAAAAAAA=\n"
                      "F:etc\nR:tool.conf\nZ:Q1AAAAAAAAAAAAAAAAAAAAAAAAAAA=\n\n")
    # apk-tools 3 names scripts <name>-<version>.X1<hex identity>.<type>.
    scripts = _db_tar({f"tool-1.0-r0.X1{old_hex}.post-install": b"#!/bin/sh\n"})
    nodes = {p: Node(p, k, 0o755, 0, 0, 0, "", 0) for p, k in [
        ("usr", "dir"), ("usr/bin", "dir"), ("usr/bin/tool", "file"), ("usr/bin/gone", "file"), ("etc", "dir"),
        ("etc/tool.conf", "file"), ("lib", "dir"), ("lib/apk", "dir"), ("lib/apk/db", "dir"),
        ("lib/apk/db/installed", "file"), ("lib/apk/db/scripts.tar.gz", "file")]}
    view = View(nodes, {"lib/apk/db/installed": installed_text.encode(), "lib/apk/db/scripts.tar.gz": scripts,
                        "etc/tool.conf": b"edited by the image"})
    path = tmp_path / "tool.apk"
    path.write_bytes(new_apk.raw)
    record = parse_index(new_apk.index_record(), "https://r")[0]
    contents = read_apk(path, tmp_path / "stage", key.keys(), expected=record.checksum, require_signature=True,
                        what="tool")
    packages = parse_installed(installed_text)
    pkg = Installing(record, contents, packages[0])
    plan = LayerPlan(view, 0)
    install_package(plan, pkg)
    database_entries(plan, packages, [pkg])
    e = plan.entries
    assert e["usr/bin/tool"].kind is Kind.FILE and "usr/bin" not in e and e["usr/share/tool"].kind is Kind.DIR
    assert e["usr/bin/gone"].kind is Kind.WHITEOUT
    # The image changed the protected conffile: it is kept, the new one lands beside it.
    assert "etc/tool.conf" not in e and e["etc/tool.conf.apk-new"].kind is Kind.FILE
    content = e["lib/apk/db/installed"].content
    assert content is not None
    new_db = parse_installed(content().read().decode())
    assert new_db[0].version == "1.1-r0" and new_db[0].field("C") == new_apk.checksum
    assert new_db[0].paths() == ["usr/bin/tool", "etc/tool.conf"]
    scripts_entry = e["lib/apk/db/scripts.tar.gz"].content
    assert scripts_entry is not None
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(scripts_entry().read()))) as tar:
        assert tar.getnames() == [f"tool-1.1-r0.X1{contents.identity.hex()}.post-upgrade"]


def test_plan_brings_in_a_new_provider() -> None:
    old = [_rec("libcrypto3", "3.5.1-r0", "openssl")]
    available = [*old, _rec("libcrypto3", "3.5.4-r0", "openssl", depends="so:libz.so.1"),
                 _rec("zlib", "1.3.1-r2", provides="so:libz.so.1=1.3.1")]
    res = resolve({"libcrypto3": _inst(old[0])}, [Wanted("libcrypto3", "3.5.4-r0")], available)
    assert [(c.record.name, c.kind) for c in res.chosen] == [("libcrypto3", UpdateKind.REPORTED),
                                                            ("zlib", UpdateKind.NEW)]


def test_plan_moves_a_package_whose_install_if_the_change_breaks() -> None:
    """ssl_client is installed by install_if `busybox=<version> libssl3`: a busybox upgrade must take the
    ssl_client built for the new busybox (apk would purge the old one otherwise)."""
    old = [_rec("busybox", "1.37.0-r30"), _rec("libssl3", "3.5.8-r0"),
           _rec("ssl_client", "1.37.0-r30", "busybox", install_if="busybox=1.37.0-r30 libssl3")]
    installed = {r.name: _inst(r) for r in old}
    new = [_rec("busybox", "1.37.0-r31"),
           _rec("ssl_client", "1.37.0-r31", "busybox", install_if="busybox=1.37.0-r31 libssl3")]
    res = resolve(installed, [Wanted("busybox", "1.37.0-r31")], [*old, *new])
    assert {c.record.name: (c.record.version, c.kind) for c in res.chosen} == {
        "busybox": ("1.37.0-r31", UpdateKind.REPORTED), "ssl_client": ("1.37.0-r31", UpdateKind.SIBLING)}
    # No ssl_client whose condition holds again: copa leaves it (apk would purge it; copa never removes).
    res = resolve(installed, [Wanted("busybox", "1.37.0-r31")], [*old, new[0]])
    assert [c.record.name for c in res.chosen] == ["busybox"] and res.failures == ()


def test_scripts_archive_is_written_as_apk_writes_it() -> None:
    """Re-writing the real image's scripts.tar.gz entry by entry gives back apk-tools 3's exact bytes."""
    from copa.pkg.apk.install import apk_gzip, apk_tar_member
    from tests.support.alpine import alpine_rootfs

    original = (alpine_rootfs() / "lib/apk/db/scripts.tar.gz").read_bytes()
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(original))) as tar:
        entries = [(m, tar.extractfile(m).read()) for m in tar]  # type: ignore[union-attr]
    assert entries and all(m.name.split(".")[-2].startswith("X1") for m, _ in entries)
    raw = b"".join(apk_tar_member(m.name, data, m.mode, int(m.mtime)) for m, data in entries) + b"\0" * 1024
    assert raw == gzip.decompress(original)
    assert apk_gzip(raw) == original


def test_plan_keeps_a_package_an_installed_one_pins() -> None:
    """alpine-baselayout needs alpine-baselayout-data=<its version> and has no newer build: real apk leaves the data
    package alone, so copa must not upgrade it either (it reports it as unfixable instead)."""
    base = _rec("alpine-baselayout", "3.7.2-r0", "alpine-baselayout", depends="alpine-baselayout-data=3.7.2-r0")
    data = _rec("alpine-baselayout-data", "3.7.2-r0", "alpine-baselayout")
    newer_data = _rec("alpine-baselayout-data", "3.7.2-r1", "alpine-baselayout")
    installed = {"alpine-baselayout": _inst(base), "alpine-baselayout-data": _inst(data)}
    res = resolve(installed, [Wanted("alpine-baselayout-data", "3.7.2-r1")], [base, data, newer_data])
    assert res.chosen == ()
    assert [(f.name, f.reason) for f in res.failures] == [("alpine-baselayout-data", SkipReason.UNRESOLVABLE)]
    assert "alpine-baselayout-3.7.2-r0 needs alpine-baselayout-data=3.7.2-r0" in res.failures[0].detail
