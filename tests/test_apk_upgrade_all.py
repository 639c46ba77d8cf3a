"""Without a report copa acts as `apk upgrade`: a package whose newer version an installed package's exact pin
excludes (busybox, pinned `busybox=VERSION` by busybox-binsh, which has no newer build) is kept back, as apk keeps
it, and everything else moves; real apk's upgrade of the same root is the oracle."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import alpine, apkrepo, images
from tests.support.apkrepo import PackageUpdate, read_installed

ROOT = Path(__file__).resolve().parents[1]


def test_pinned_package_is_kept_back_as_apk_keeps_it(tmp_path: Path) -> None:
    repo = apkrepo.build_repo(alpine.alpine_rootfs(), (PackageUpdate("busybox"), PackageUpdate("zlib")),
                              tmp_path / "repo")
    with apkrepo.serve(repo.directory) as url:
        keys = tmp_path / "keys"
        keys.mkdir()
        repo.key.write_public(keys)
        oracle = alpine.copy_rootfs(alpine.alpine_rootfs(), tmp_path / "oracle")
        repo.key.write_public(oracle / "etc/apk/keys")
        (oracle / "etc/apk/repositories").write_text(f"{url}\n")
        alpine.oracle_upgrade(oracle, url, keys)
        src, ref = alpine.alpine_layout()
        layout = images.copy_layout(src, tmp_path / "layout")
        apkrepo.add_key_layer(layout, ref, alpine.alpine_rootfs(), repo.key, url)
        proc = subprocess.run([sys.executable, "-m", "copa", "patch", "-i", f"oci:{layout}:{ref}", "--oci-dir",
                               str(tmp_path / "out"), "-t", "patched"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    subprocess.run(["umoci", "unpack", "--image", f"{tmp_path / 'out'}:patched", str(tmp_path / "bundle")],
                   check=True, capture_output=True)
    before = {n: p.version for n, p in read_installed(alpine.alpine_rootfs()).items()}
    apk = {n: p.version for n, p in read_installed(oracle).items()}
    ours = {n: p.version for n, p in read_installed(tmp_path / "bundle" / "rootfs").items()}
    assert apk["zlib"] != before["zlib"]  # the oracle moved what it could...
    assert apk["busybox"] == before["busybox"]  # ...and kept busybox back
    assert ours == apk
    assert "busybox" in proc.stdout  # the summary names what was kept back


if __name__ == "__main__":
    sys.exit(pytest.main([__file__]))
