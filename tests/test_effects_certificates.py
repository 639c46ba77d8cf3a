"""The CA store where the image's own tools are not run: Alpine's C update-ca-certificates (its ca-certificates
trigger) against the real binary of the Alpine fixture run in a chroot copy, and the bundle of a Debian image without
update-ca-certificates (distroless) against the bundle the real postinst made in the bookworm fixture."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from copa.oci.layer import Entry, Kind
from copa.pkg.effects import certificates
from copa.pkg.effects.merged import Merged
from copa.pkg.effects.model import Package
from tests.support import alpine, apkrepo, images
from tests.support.apkrepo import PackageUpdate
from tests.support.rootview import apply, view_of
from tests.support.trivy import write_report

pytestmark = [
    pytest.mark.slow,
    pytest.mark.live,  # the fixtures are built from the archives on a cold cache
    pytest.mark.skipif(os.geteuid() != 0 or shutil.which("openssl") is None, reason="needs root (chroot), openssl"),
]

CERTS = "etc/ssl/certs"


def _self_signed(directory: Path, name: str) -> bytes:
    key, pem = directory / f"{name}.key", directory / f"{name}.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-keyout", str(key), "-out", str(pem), "-subj", f"/CN={name}/O=copa tests", "-days", "30"],
                   check=True, capture_output=True)
    return pem.read_bytes()


def _certs_tree(root: Path) -> dict[str, object]:
    out: dict[str, object] = {}
    for p in sorted((root / CERTS).iterdir()):
        out[p.name] = ("->", os.readlink(p)) if p.is_symlink() else p.read_bytes()
    return out


def test_alpine_update_ca_certificates_equals_the_real_one(tmp_path: Path) -> None:
    root = alpine.copy_rootfs(alpine.alpine_rootfs(), tmp_path / "root")
    assert (root / certificates.TOOL).is_file()
    before = _certs_tree(root)
    # What an upgrade of ca-certificates leaves before its trigger: one root gone (file and line), one new root
    # shipped and listed in the new /etc/ca-certificates.conf, and a local certificate of the image's owner.
    conf = (root / "etc/ca-certificates.conf").read_text()
    assert "mozilla/ACCVRAIZ1.crt\n" in conf
    (root / "usr/share/ca-certificates/mozilla/ACCVRAIZ1.crt").unlink()
    (root / "usr/share/ca-certificates/mozilla/Copa_Alpine_Test_Root.crt").write_bytes(
        _self_signed(tmp_path, "Copa Alpine Test Root"))
    conf = conf.replace("mozilla/ACCVRAIZ1.crt\n", "") + "mozilla/Copa_Alpine_Test_Root.crt\n"
    (root / "etc/ca-certificates.conf").write_text(conf)
    (root / "usr/local/share/ca-certificates/site.crt").write_bytes(_self_signed(tmp_path, "Copa Site Root"))

    merged = Merged(view_of(root), [])
    pkg = Package("ca-certificates", "1", "2", {".trigger": b"#!/bin/sh\n/usr/sbin/update-ca-certificates\n"})
    result = certificates.reproduce(merged, [pkg], "apk", None)["ca-certificates"]
    assert result.done and not result.notes
    ours = tmp_path / "ours"
    shutil.copytree(root / CERTS, ours / CERTS, symlinks=True)
    apply(ours, result.entries)

    proc = subprocess.run(["chroot", str(root), "/usr/sbin/update-ca-certificates"], capture_output=True, text=True,
                          env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
    assert proc.returncode == 0, proc.stderr
    real = _certs_tree(root)
    assert real != before  # the real tool did change the store: the comparison can fail
    assert "ca-cert-ACCVRAIZ1.pem" not in real and "ca-cert-Copa_Alpine_Test_Root.pem" in real
    assert _certs_tree(ours) == real


def test_distroless_bundle_rebuilt_as_the_postinst_did(tmp_path: Path) -> None:
    """The bookworm fixture's bundle was made by the real postinst (debconf defaults: every certificate). Seen as a
    distroless image (no update-ca-certificates, no /etc/ca-certificates.conf) with a stale bundle, copa's rebuild
    must give the same bytes."""
    base = images.debian_rootfs()
    real = (base / CERTS / "ca-certificates.crt").read_bytes()
    view = view_of(base)
    hidden = [Entry.whiteout(certificates.TOOL), Entry.whiteout(certificates.CONF),
              Entry.file(f"{CERTS}/ca-certificates.crt", b"stale\n")]
    hidden += [Entry.whiteout(f"{CERTS}/{n.name}") for n in (base / CERTS).iterdir() if n.is_symlink()]
    merged = Merged(view, hidden)
    pkg = Package("ca-certificates", "1", "2", {})
    result = certificates.reproduce(merged, [pkg], "dpkg", None)["ca-certificates"]
    files = {e.path: e for e in result.entries}
    assert set(files) == {f"{CERTS}/ca-certificates.crt"}  # only the bundle: the image had no links
    entry = files[f"{CERTS}/ca-certificates.crt"]
    assert entry.kind is Kind.FILE and entry.content is not None
    with entry.content() as f:
        assert f.read() == real
    # No bundle in the image: nothing to rebuild.
    merged = Merged(view, [*hidden[:2], Entry.whiteout(f"{CERTS}/ca-certificates.crt")])
    assert certificates.reproduce(merged, [pkg], "dpkg", None) == {}


def test_alpine_upgrade_end_to_end(tmp_path: Path) -> None:
    """A newer ca-certificates built with apkrepo (one root removed, one added, its conf listing it, the real trigger)
    patched into the Alpine image by `copa patch`; the oracle is real apk upgrading a copy of the rootfs, then the
    real update-ca-certificates run in a chroot as the trigger would."""
    base = alpine.alpine_rootfs()
    trigger = next(m for m in _scripts(base) if m[0].startswith("ca-certificates-") and m[0].endswith(".trigger"))[1]
    conf = (base / "etc/ca-certificates.conf").read_text()
    new_conf = conf.replace("mozilla/ACCVRAIZ1.crt\n", "") + "mozilla/Copa_Alpine_E2E_Root.crt\n"
    update = PackageUpdate("ca-certificates", drop_files=("usr/share/ca-certificates/mozilla/ACCVRAIZ1.crt",
                                                          "etc/ca-certificates.conf"),
                           files={"usr/share/ca-certificates/mozilla/Copa_Alpine_E2E_Root.crt":
                                  _self_signed(tmp_path, "Copa Alpine E2E Root"),
                                  "etc/ca-certificates.conf": new_conf.encode()},
                           scripts={"trigger": trigger})
    repo = apkrepo.build_repo(base, [update], tmp_path / "repo")
    keys = tmp_path / "keys"
    keys.mkdir()
    repo.key.write_public(keys)
    built = repo.package("ca-certificates")
    report = write_report(tmp_path / "trivy.json", {"ca-certificates": (built.old_version or "", built.version)},
                          os_version="3.23.6", family="alpine")
    with apkrepo.serve(repo.directory) as url:
        src, ref = alpine.alpine_layout()
        layout = images.copy_layout(src, tmp_path / "layout")
        apkrepo.add_key_layer(layout, ref, base, repo.key, url)
        proc = subprocess.run([sys.executable, "-m", "copa", "patch", "-i", f"oci:{layout}:{ref}", "-r", str(report),
                               "--oci-dir", str(tmp_path / "out"), "-t", "patched", "--json"],
                              cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        oracle = alpine.copy_rootfs(base, tmp_path / "oracle")
        alpine.oracle_upgrade(oracle, url, keys)
    result = json.loads(proc.stdout)
    note = next(u for u in result["updates"] if u["name"] == "ca-certificates").get("scripts", "")
    assert "update-ca-certificates" in note and "not" not in note, note
    run = subprocess.run(["chroot", str(oracle), "/usr/sbin/update-ca-certificates"], capture_output=True, text=True,
                         env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
    assert run.returncode == 0, run.stderr
    subprocess.run(["umoci", "unpack", "--image", f"{tmp_path / 'out'}:patched", str(tmp_path / "bundle")],
                   check=True, capture_output=True)
    patched = tmp_path / "bundle/rootfs"
    theirs = _certs_tree(oracle)
    assert theirs != _certs_tree(base)  # the trigger changed the store
    assert _certs_tree(patched) == theirs


def _scripts(root: Path) -> list[tuple[str, bytes]]:
    with tarfile.open(root / "lib/apk/db/scripts.tar.gz") as tar:
        out = []
        for m in tar.getmembers():
            f = tar.extractfile(m)
            if f is not None:
                out.append((m.name, f.read()))
        return out
