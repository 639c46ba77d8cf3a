"""Start-up stays light: the CLI and `copa --version` import none of the heavy libraries, and a `copa patch` that
shows no progress bars imports no rich, YAML or cryptography before its first request.

Checked on `sys.modules` of a fresh interpreter (this test process has imported everything already), not on time:
timing a loaded machine would make the test flaky, and a module that is imported is the cost itself. Each check has
its positive control in the same child: the module named really does load when its feature is used, so a check
cannot pass because a name is misspelt or the module is gone.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# The third-party libraries that cost the most to import (tens of ms each): only the code that uses them loads them.
HEAVY = ("rich", "requests", "urllib3", "zstandard", "isal", "pysequoia", "cryptography", "yaml", "networkx",
         "debian", "multiprocessing")  # fmt: skip
# copa's own modules a patch uses only after its first registry request (the layer scan and cache, the image's
# layers, package detection and downloads, mutate, the outputs) or only for some flags (-o, --attach, -l,
# --exit-on-eol, oci:/docker-archive: images): copa.api imports them where they are used.
DEFERRED = ("copa.oci.image", "copa.oci.layercache", "copa.oci.layerstore", "copa.oci.rootfs", "copa.oci.mutate",
            "copa.oci.layout", "copa.oci.archive", "copa.oci.loaders", "copa.oci.referrers", "copa.pkg.base",
            "copa.pkg.fetch", "copa.pkg.cache", "copa.pkg.repoauth", "copa.pkg.inventory", "copa.report.match",
            "copa.sbom", "copa.vex", "copa.eol", "copa.oci.layer")  # fmt: skip


def _child(code: str, *args: str) -> dict[str, object]:
    """Run `code` in a fresh interpreter; it prints one JSON object as its last stdout line."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("COPA_DEBUG", None)
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args], capture_output=True, text=True,
                          env=env, cwd=REPO, timeout=120, check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def test_import_cli_loads_no_heavy_library() -> None:
    got = _child(f"""
        import json, sys
        heavy = {HEAVY!r}
        import copa.cli
        before = sorted(m for m in heavy if m in sys.modules)
        import copa.api, copa.oci.image, copa.progress, rich.console, yaml
        after = sorted(m for m in heavy if m in sys.modules)
        print(json.dumps({{"before": before, "after": after}}))
    """)
    assert got["before"] == []
    # The control: the engine does load what the CLI leaves out.
    assert {"zstandard", "isal", "rich", "yaml"} <= set(got["after"])  # type: ignore[arg-type]


def test_version_and_help_load_no_heavy_library() -> None:
    got = _child(f"""
        import contextlib, io, json, sys
        heavy = {HEAVY!r}
        from copa.cli import main
        out = io.StringIO()
        codes = []
        for argv in (["--version"], ["patch", "--help"], ["bulk", "--help"]):
            with contextlib.redirect_stdout(out):
                try:
                    main(argv)
                except SystemExit as e:
                    codes.append(e.code)
        print(json.dumps({{"loaded": sorted(m for m in heavy if m in sys.modules), "codes": codes,
                          "out": out.getvalue()}}))
    """)
    assert got["loaded"] == []
    assert got["codes"] == [0, 0, 0]
    out = str(got["out"])
    # The version lists every package family (read from copa.pkg.detect without importing the adapters).
    assert all(f"  {family}:" in out for family in ("dpkg", "apk", "rpm")), out


@pytest.mark.parametrize("progress", ["plain", "json"])
def test_patch_without_bars_loads_no_rich_yaml_or_cryptography_before_its_first_request(
    tmp_path: Path, progress: str
) -> None:
    """The first connection of a `copa patch` (to a listener of ours that never answers) is where the child stops
    and reports what it has imported: none of what only bars, PatchConfig files, client
    certificates or the sweep need, nor the engine copa.api imports once that request is made."""
    report = tmp_path / "trivy.json"
    report.write_text(json.dumps({
        "SchemaVersion": 2, "ArtifactName": "x", "ArtifactType": "container_image",
        "Metadata": {"OS": {"Family": "debian", "Name": "12.5"}, "ImageConfig": {"architecture": "amd64",
                                                                                "os": "linux"}},
        "Results": [{"Target": "x", "Class": "os-pkgs", "Type": "debian", "Vulnerabilities": [
            {"VulnerabilityID": "CVE-2099-1", "PkgName": "libssl3", "InstalledVersion": "1", "FixedVersion": "2"}]}],
    }))  # fmt: skip
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        got = _child(f"""
            import importlib, json, os, socket, sys
            heavy = {HEAVY!r}
            deferred = {DEFERRED!r}
            real_connect = socket.socket.connect

            def first_connect(sock, address):
                # Stop at the first network request: report what is loaded by then, and end without a traceback.
                loaded = sorted(m for m in heavy + deferred if m in sys.modules)
                # The control: every deferred name is a module that imports (a misspelt one would pass unseen).
                for name in deferred:
                    importlib.import_module(name)
                print(json.dumps({{"address": list(address)[:2], "loaded": loaded}}), flush=True)
                os._exit(0)

            socket.socket.connect = first_connect
            from copa.cli import main
            main(["patch", "-i", "127.0.0.1:{port}/bench/debian:1", "-r", sys.argv[1], "-t", "x", "--push",
                  "--progress", {progress!r}, "--cache-dir", sys.argv[2]])
        """, str(report), str(tmp_path / "cache"))
    assert got["address"] == ["127.0.0.1", port]
    loaded = set(got["loaded"])  # type: ignore[arg-type]
    # copa's own HTTP client (copa.web) makes the request: neither requests nor urllib3 is ever imported.
    unwanted = {"requests", "urllib3", "rich", "yaml", "cryptography", "networkx", "pysequoia", "multiprocessing"}
    assert not loaded & unwanted, loaded
    assert not loaded & set(DEFERRED), loaded


_DEB = b"deb http://127.0.0.1:9/debian bookworm main\n"
_DEB822 = b"Types: deb\nURIs: http://127.0.0.1:9/debian\nSuites: bookworm\nComponents: main\n"
_REPO = b"[ubi]\nname=ubi\nbaseurl=http://127.0.0.1:9/ubi/$basearch\nenabled=1\ngpgcheck=0\n"
# The /etc a layer scan captures of an image of each family (and of none): which early downloads are imported.
_ETC: dict[str, dict[str, bytes]] = {
    "debian": {"etc/apt/sources.list": _DEB, "etc/os-release": b"ID=debian\nVERSION_ID=12\n"},
    "debian-deb822": {"etc/apt/sources.list.d/debian.sources": _DEB822, "etc/os-release": b"ID=debian\n"},
    "ubi": {"etc/yum.repos.d/ubi.repo": _REPO, "etc/dnf/dnf.conf": b"[main]\n",
            "etc/os-release": b'ID="rhel"\nVERSION_ID="9.4"\n'},
    "amazon": {"etc/yum.conf": b"[main]\n", "etc/yum.repos.d/amzn2-core.repo": _REPO,
               "etc/os-release": b'ID="amzn"\nVERSION_ID="2"\n'},
    "alpine": {"etc/apk/repositories": b"http://127.0.0.1:9/alpine/v3.19/main\n", "etc/os-release": b"ID=alpine\n"},
    "distroless": {"etc/os-release": b"ID=debian\n"},
}


@pytest.mark.parametrize("image", sorted(_ETC))
def test_an_image_imports_only_the_early_downloads_its_etc_configures(image: str, tmp_path: Path) -> None:
    """copa.pkg.detect.prefetch_families decides, before importing a family's Prefetcher, whether the captured /etc
    gives it anything to do. The oracle is each Prefetcher's own decision (apt: the sources it finds; rpm: the
    repositories its setup reads): every family that would download must be loaded, and an image of another family
    (or of none) loads none of it."""
    from copa.pkg.apk.prefetch import index_urls
    from copa.pkg.base import PrefetchHints, RepositoryOptions
    from copa.pkg.detect import prefetch_families
    from copa.pkg.dpkg.repos import SOURCES_DIR, SOURCES_LIST, sources_in, user_sources
    from copa.pkg.fetch import make_fetcher
    from copa.pkg.rpm.prefetch import MetadataPrefetch

    captured = _ETC[image]
    repos = RepositoryOptions()
    apt = user_sources(repos) or sources_in(captured.get(SOURCES_LIST),
                                            {p: c for p, c in captured.items() if p.startswith(SOURCES_DIR + "/")})
    setup = MetadataPrefetch(repos, "amd64", "", make_fetcher(tmp_path, 5.0, None, repos),
                             PrefetchHints()).setup(captured)
    apk = index_urls(captured, repos, "amd64", "")
    would = {name for name, busy in (("dpkg", bool(apt)), ("rpm", setup is not None and bool(setup.repos)),
                                     ("apk", bool(apk))) if busy}
    loaded = set(prefetch_families(captured, repos))
    expected = {"debian": {"dpkg"}, "debian-deb822": {"dpkg"}, "ubi": {"rpm"}, "amazon": {"rpm"},
                "alpine": {"apk"}}.get(image, set())
    assert loaded == would == expected
    # Repositories the user names are read by every family its own way: each one's early download is loaded.
    named = RepositoryOptions(repositories=("deb http://127.0.0.1:9/debian bookworm main",))
    assert set(prefetch_families(captured, named)) == {"dpkg", "rpm", "apk"}
