"""A small fleet in a real registry: the hermetic Debian image (tests/support/debimage.py) under several
repositories and tags, each with its own small application layer, pushed by skopeo.

    images = push_fleet(registry.host, "fleet", [("app-a", "1.0"), ("app-a", "1.1"), ("app-b", "2.0")], work)
    images[0].reference   # 127.0.0.1:PORT/fleet/app-a:1.0

Every image shares the base layer (what a fleet of one distribution looks like) and differs in its top layer, so
each patched image has its own digest. `patch_flags` are the copa flags that point at the hermetic repository.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import subprocess
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.support import debimage, images
from tests.support.aptrepo import AptRepo


@dataclass(frozen=True)
class FleetImage:
    host: str
    repository: str  # e.g. fleet/app-a
    tag: str
    digest: str  # the manifest digest skopeo pushed

    @property
    def reference(self) -> str:
        return f"{self.host}/{self.repository}:{self.tag}"

    def target(self, suffix: str) -> str:
        return f"{self.host}/{self.repository}:{self.tag}-{suffix}"


def _put_blob(layout: Path, data: bytes) -> dict[str, object]:
    digest = hashlib.sha256(data).hexdigest()
    (layout / "blobs" / "sha256" / digest).write_bytes(data)
    return {"digest": f"sha256:{digest}", "size": len(data)}


def add_layer(layout: Path, ref: str, files: dict[str, str], created_by: str) -> None:
    """Append a gzip layer holding `files` (path -> text, parents added) to image `ref` of `layout`, in place.

    Written here with tarfile rather than `umoci insert`: umoci 0.4.7's insert of a single file writes a tar that
    ends inside the file's padding (GNU tar: "Unexpected EOF in archive")."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        dirs = sorted({"/".join(p.split("/")[:n]) for p in files for n in range(1, p.count("/") + 1)})
        for directory in dirs:
            info = tarfile.TarInfo(directory)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 1700000000
            tar.addfile(info)
        for path, text in sorted(files.items()):
            payload = text.encode()
            info = tarfile.TarInfo(path)
            info.size, info.mode, info.mtime = len(payload), 0o644, 1700000000
            tar.addfile(info, io.BytesIO(payload))
    diff_id = "sha256:" + hashlib.sha256(raw.getvalue()).hexdigest()
    layer = _put_blob(layout, gzip.compress(raw.getvalue(), mtime=0))
    index = json.loads((layout / "index.json").read_text())
    entry = next(m for m in index["manifests"] if m["annotations"]["org.opencontainers.image.ref.name"] == ref)
    blobs = layout / "blobs" / "sha256"
    manifest = json.loads((blobs / entry["digest"].split(":")[1]).read_text())
    config = json.loads((blobs / manifest["config"]["digest"].split(":")[1]).read_text())
    config["rootfs"]["diff_ids"].append(diff_id)
    config.setdefault("history", []).append({"created_by": created_by,
                                              "created": config.get("created", "2023-11-14T22:13:20Z")})
    manifest["config"].update(_put_blob(layout, json.dumps(config).encode()))
    manifest["layers"].append({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", **layer})
    entry.update(_put_blob(layout, json.dumps(manifest).encode()))
    (layout / "index.json").write_text(json.dumps(index))


def app_layout(dest: Path, app: str, tag: str, base: debimage.BaseImage | None = None) -> Path:
    """A copy of `base`'s layout (default: the hermetic image) with /srv/APP/version ("APP TAG") as a new layer."""
    base = base if base is not None else debimage.base_image()
    layout = images.copy_layout(base.layout, dest)
    add_layer(layout, base.ref, {f"srv/{app}/version": f"{app} {tag}\n"}, f"COPY {app} /srv/{app}")
    return layout


def push_fleet(host: str, namespace: str, apps: Sequence[tuple[str, str]], work: Path,
               base: debimage.BaseImage | None = None) -> list[FleetImage]:
    out = []
    for app, tag in apps:
        layout = app_layout(work / f"{app}-{tag}", app, tag, base)
        repository = f"{namespace}/{app}"
        digest = images.push_layout(layout, (base or debimage.base_image()).ref, host, f"{repository}:{tag}")
        out.append(FleetImage(host, repository, tag, digest))
    return out


def patch_flags(server_url: str, repo: AptRepo) -> list[str]:
    return debimage.copa_args(server_url, repo)


def skopeo_digest(reference: str) -> str | None:
    """The manifest digest skopeo reads for a registry tag, or None when the tag does not exist."""
    proc = subprocess.run(["skopeo", "inspect", "--tls-verify=false", "--format", "{{.Digest}}",
                           f"docker://{reference}"], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        if "manifest unknown" in proc.stderr or "not found" in proc.stderr.lower():
            return None
        raise AssertionError(f"skopeo inspect {reference}: {proc.stderr.strip()}")
    return proc.stdout.strip()


def skopeo_tags(host: str, repository: str) -> list[str]:
    proc = subprocess.run(["skopeo", "list-tags", "--tls-verify=false", f"docker://{host}/{repository}"],
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        return []
    return sorted(json.loads(proc.stdout)["Tags"] or [])


def skopeo_pull_all(reference: str, dest: Path) -> None:
    """skopeo copies every blob of the tag (verifying each digest) into a layout: the tag is whole."""
    proc = subprocess.run(["skopeo", "copy", "--quiet", "--src-tls-verify=false", f"docker://{reference}",
                           f"oci:{dest}:x"], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, f"{reference} is not whole: {proc.stderr.strip()}"
