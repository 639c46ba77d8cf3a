"""The CA store where the image's own tools are not run: Alpine's C update-ca-certificates (its ca-certificates
trigger) against the real binary of the Alpine fixture run in a chroot copy, and the bundle of a Debian image without
update-ca-certificates (distroless) against the bundle the real postinst made in the bookworm fixture."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from copa.oci.layer import Entry, Kind
from copa.pkg.effects import certificates
from copa.pkg.effects.merged import Merged
from copa.pkg.effects.model import Package
from tests.support import alpine, images
from tests.support.rootview import apply, view_of

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
