"""Hostile registries (issue 12): a registry that misbehaves on demand (tests/support/hostile_registry.py), since the
real docker-registry cannot. Each misbehaviour ends in the named CopaError, one line, within a bounded time and a
bounded number of requests; the well-behaved mode is first checked against skopeo (the same manifest, the same
blobs), so the server is a registry a real client reads. A sample goes through the CLI: exit code, one line, no
traceback, nothing written, within the time bound.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from copa.errors import AuthError, CopaError, IntegrityError, RegistryError
from copa.oci.image import Image, resolve_platform
from copa.oci.model import Index, Manifest, Platform
from copa.oci.reference import Reference
from copa.oci.registry import MAX_REDIRECTS, RegistryClient, RegistryOptions, RegistrySource
from copa.oci.rootfs import scan
from tests.support.hostile_cli import refused, run_copa
from tests.support.hostile_images import debian_base, layer_tar, write_layout
from tests.support.hostile_registry import MODES, HostileRegistry

# The client's --timeout in these cases, and what each case may take: the timeout, one retry with its backoff, and
# scheduling slack on a shared machine. Without the deadlines a trickled manifest took 105 s at --timeout 2.
TIMEOUT = 1.0
CASE_SECONDS = 4 * TIMEOUT + 3
CLI_SECONDS = 10.0
CLI_PEAK_RSS_BYTES = 200 << 20


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HostileRegistry]:
    layout = write_layout(tmp_path_factory.mktemp("hostile-registry") / "layout", [layer_tar(debian_base())])
    server = HostileRegistry(json.dumps(layout.manifest).encode(), dict(layout.blobs)).start()
    yield server
    server.stop()


def _pull(registry: HostileRegistry, ref: str) -> int:
    """What copa patch reads of an image from a registry: root (the linux/amd64 image of an index), config, every
    layer; the number of paths."""
    with RegistryClient(RegistryOptions(timeout=TIMEOUT, retries=1, backoff=0.05)) as client:
        source = RegistrySource(client, Reference.parse(ref))
        root = source.root()
        if isinstance(root, Index):
            root, _ = resolve_platform(source, root, Platform("linux", "amd64"))
        assert isinstance(root, Manifest)
        return len(scan(Image.load(source, root), None, ("etc",)).nodes)


def test_baseline_is_a_registry_skopeo_reads(registry: HostileRegistry, tmp_path: Path) -> None:
    registry.mode = "ok"
    raw = subprocess.run(["skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{registry.host}/app:1"],
                         capture_output=True, check=True, timeout=60).stdout
    assert raw == registry.manifest
    subprocess.run(["skopeo", "copy", "--quiet", "--src-tls-verify=false", f"docker://{registry.host}/app:1",
                    f"oci:{tmp_path / 'copy'}:t"], check=True, capture_output=True, timeout=60)
    copied = {p.name for p in (tmp_path / "copy" / "blobs" / "sha256").iterdir()}
    assert {d.split(":")[1] for d in registry.blobs} <= copied
    assert _pull(registry, f"{registry.host}/app:1") == 6


# mode -> (reference tail, error, words of the message, most requests the client may make)
CASES: dict[str, tuple[str, type[CopaError], tuple[str, ...], int]] = {
    "redirect-loop": ("app:1", RegistryError, ("redirected more than", "loop"), MAX_REDIRECTS + 3),
    "redirect-pingpong": ("app:1", RegistryError, ("redirect loop",), MAX_REDIRECTS + 3),
    "manifest-endless": ("app:1", IntegrityError, ("larger than",), 4),
    "manifest-larger": ("app:1", IntegrityError, ("larger than",), 4),
    "blob-endless": ("app:1", IntegrityError, ("more than the expected",), 6),
    "blob-shorter": ("app:1", RegistryError, ("lost the connection",), 8),
    "trickle-manifest": ("app:1", RegistryError, ("too slowly", "--timeout"), 4),
    "trickle-blob": ("app:1", RegistryError, ("too slowly", "--timeout"), 6),
    "trickle-token": ("app:1", RegistryError, ("too slowly", "token"), 4),
    "wrong-digest-header": ("app:1", IntegrityError, ("announced",), 4),
    "wrong-manifest": ("DIGEST", IntegrityError, ("hashing to",), 4),
    "token-never-answers": ("app:1", RegistryError, ("token server",), 4),
    "token-garbage": ("app:1", RegistryError, ("no token",), 4),
    "401-loop": ("app:1", AuthError, ("401",), 8),
    "retry-after-forever": ("app:1", RegistryError, ("longer than --timeout",), 4),
    "index-contains-itself": ("app:1", IntegrityError, ("hashing to",), 4),
}


def test_every_mode_has_a_case() -> None:
    assert set(CASES) == set(MODES) - {"ok"}


@pytest.mark.parametrize("mode", sorted(CASES))
def test_hostile_registry(registry: HostileRegistry, mode: str) -> None:
    tail, error, words, most = CASES[mode]
    registry.mode = mode
    registry.log.clear()
    ref = f"{registry.host}/app@{registry.manifest_digest}" if tail == "DIGEST" else f"{registry.host}/{tail}"
    start = time.monotonic()
    with pytest.raises(CopaError) as info:
        _pull(registry, ref)
    seconds = time.monotonic() - start
    assert isinstance(info.value, error), (type(info.value), str(info.value))
    line = str(info.value)
    assert line and "\n" not in line, line
    for word in words:
        assert word.lower() in line.lower(), line
    assert seconds < CASE_SECONDS, (seconds, line)
    assert len(registry.log) <= most, registry.log


CLI_CASES: dict[str, tuple[int, tuple[str, ...]]] = {
    # A blob, not the manifest: a slow manifest is retried (4 retries with backoff, 14 s at --timeout 1s), a blob
    # already being read is not.
    "trickle-blob": (4, ("too slowly",)),
    "redirect-loop": (4, ("redirect loop",)),
    "wrong-digest-header": (5, ("announced",)),
    "blob-endless": (5, ("more than the expected",)),
}


@pytest.mark.parametrize("mode", sorted(CLI_CASES))
def test_cli_against_hostile_registry(registry: HostileRegistry, mode: str, tmp_path: Path) -> None:
    code, words = CLI_CASES[mode]
    registry.mode = mode
    work = tmp_path / "work"
    work.mkdir()
    run = run_copa(["patch", "-i", f"{registry.host}/app:1", "--oci-dir", str(work / "out"), "--output-tar",
                    str(work / "out.tar"), "--timeout", "1s", "--progress", "quiet"], work, tmp_path / "logs",
                   env={"REGISTRY_AUTH_FILE": str(tmp_path / "no-auth.json")})
    refused(run, code, words, seconds=CLI_SECONDS, peak_rss=CLI_PEAK_RSS_BYTES)
    assert list(work.iterdir()) == [], "nothing may be written"
    assert sorted(os.listdir(tmp_path)) == ["logs", "work"]
