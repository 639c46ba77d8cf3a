"""Patch layers built once and pushed once across a sweep.

`LayerStore`: built patch layers in the copa cache, by a key of everything that determines their bytes (the layer
writer is deterministic). The blob goes into the cache's content-addressed store (verified by sha256 on first use
in each process, like every blob there); its metadata (diff_id, size, media type) into a derived entry (verified by
its sum). `building(key)` lets one process of many build a layer while the others wait for it.

`BlobHomes`: which repositories of a registry are known to hold a blob (pushed, mounted or found there), so that a
push to another repository of the same registry mounts it (one POST) instead of uploading it again. Kept in memory
for the process, and in the cache directory when one is given so that the processes of a sweep share it.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Protocol

import isal
import zstandard

import copa
from copa.oci.digest import Digest, InvalidDigest
from copa.oci.layer import LayerBlob

FORMAT = 1
_LOCK_STALE = 600.0  # seconds: a build lock older than this belonged to a process that died
_POLL = 0.1
_MAX_HOMES = 3  # repositories tried for a mount before uploading


class BlobStore(Protocol):
    """What LayerStore needs of copa's cache (copa.pkg.cache.Cache)."""

    root: Path

    def lookup(self, sha256: str, size: int | None) -> Path | None: ...

    def store_stream(self, stream: BinaryIO, sha256: str, size: int | None, what: str) -> Path: ...

    def adopt(self, path: Path, sha256: str, size: int, what: str) -> Path: ...

    def named(self, name: str) -> Path: ...

    def store_named(self, name: str, data: bytes) -> Path: ...


@functools.cache
def writer_version() -> str:
    """What else decides a layer's bytes: copa's code (a fingerprint of its sources, since the version number does not
    move with every change to a package writer) and the compressors' versions."""
    package = Path(__file__).resolve().parents[1]
    fingerprint = hashlib.sha256()
    for path in sorted(package.rglob("*.py")):
        fingerprint.update(str(path.relative_to(package)).encode() + b"\0" + path.read_bytes() + b"\0")
    return (f"copa {copa.__version__} {fingerprint.hexdigest()[:16]}; isal {isal.__version__}; "
            f"zstandard {zstandard.__version__}")


def layer_key(base_diff_ids: Iterable[Digest], updates: Iterable[tuple[str, str, str]], *, compression: str,
              docker: bool, source_date_epoch: str | None, writer_version: str, extra: Iterable[str] = ()) -> str:
    """The key of a patch layer: the base layers it sits on (their content decides the rewritten package databases
    and what the scripts' effects produce), the updates (name, architecture, new version; a removal has ""), the
    options that change the bytes, and the writer's version (`writer_version()`: copa's code, and ISA-L's and zstd's
    versions, whose compressed bytes these are).
    `extra`: anything else the caller knows to matter, e.g. the sha256 of each package file (two repositories may
    ship different builds under one version)."""
    doc = {
        "format": FORMAT,
        "base": [str(d) for d in base_diff_ids],
        "updates": sorted([list(u) for u in updates]),
        "compression": compression,
        "docker": docker,
        "epoch": source_date_epoch or "",
        "writer": writer_version,
        "extra": sorted(extra),
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class _Meta:
    digest: Digest
    diff_id: Digest
    size: int
    media_type: str
    extra: dict[str, Any]

    def encode(self) -> bytes:
        return json.dumps({"format": FORMAT, "digest": str(self.digest), "diff_id": str(self.diff_id),
                           "size": self.size, "media_type": self.media_type, "extra": self.extra},
                          sort_keys=True).encode()

    @classmethod
    def decode(cls, raw: bytes) -> _Meta | None:
        try:
            doc = json.loads(raw)
            if not isinstance(doc, dict) or doc.get("format") != FORMAT:
                return None
            size, media_type, extra = doc["size"], doc["media_type"], doc.get("extra", {})
            if not isinstance(size, int) or size < 0 or not isinstance(media_type, str) or not isinstance(extra, dict):
                return None
            return cls(Digest.parse(doc["digest"]), Digest.parse(doc["diff_id"]), size, media_type, extra)
        except (ValueError, KeyError, TypeError, InvalidDigest):
            return None


class LayerStore:
    def __init__(self, cache: BlobStore) -> None:
        self.cache = cache

    @staticmethod
    def _name(key: str) -> str:
        return f"patch-layers/{key[:2]}/{key}.json"

    def get(self, key: str) -> LayerBlob | None:
        """The stored layer for `key`, its blob verified; None when absent or damaged (the caller builds it)."""
        found = self.get_with_extra(key)
        return found[0] if found is not None else None

    def get_with_extra(self, key: str) -> tuple[LayerBlob, dict[str, Any]] | None:
        """The stored layer and the JSON object `put` was given with it (e.g. what the build reported)."""
        meta_path = self.cache.named(self._name(key))
        try:
            meta = _Meta.decode(meta_path.read_bytes())
        except OSError:
            return None
        if meta is None or meta.digest.algorithm != "sha256":
            return None
        path = self.cache.lookup(meta.digest.hex, meta.size)
        if path is None:
            return None
        return LayerBlob(path, meta.digest, meta.diff_id, meta.size, meta.media_type), meta.extra

    def put(self, key: str, layer: LayerBlob, extra: dict[str, Any] | None = None) -> LayerBlob:
        """Copy `layer` into the store (atomically, verified against its digest) and return the stored copy.
        `extra`: a JSON-serialisable object kept with it (`get_with_extra`)."""
        # The layer file is this process's own, its digest computed as it was written: linked in, not copied.
        path = self.cache.adopt(layer.path, layer.digest.hex, layer.size, f"patch layer {layer.digest}")
        meta = _Meta(layer.digest, layer.diff_id, layer.size, layer.media_type, dict(extra or {}))
        self.cache.store_named(self._name(key), meta.encode())
        return LayerBlob(path, layer.digest, layer.diff_id, layer.size, layer.media_type)

    @contextmanager
    def building(self, key: str, timeout: float = _LOCK_STALE) -> Iterator[None]:
        """Held while one process builds the layer for `key`: the others wait here, then find it with `get`.
        An exclusive-create lock file (atomic on local file systems and NFS v3+); a lock untouched for `timeout`
        seconds is a dead builder's and is taken over."""
        lock = self.cache.root / "patch-layers" / f"{key}.lock"
        lock.parent.mkdir(parents=True, exist_ok=True)
        while True:
            try:
                os.close(os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
                break
            except FileExistsError:
                try:
                    if time.time() - lock.stat().st_mtime > timeout:
                        lock.unlink()
                        continue
                except FileNotFoundError:
                    continue
                time.sleep(_POLL)
        try:
            yield
        finally:
            lock.unlink(missing_ok=True)

    def get_or_build(self, key: str, build: Callable[[], LayerBlob]) -> tuple[LayerBlob, bool]:
        """The layer for `key`, built by `build` only if no process has stored it; True when built here."""
        hit = self.get(key)
        if hit is not None:
            return hit, False
        with self.building(key):
            hit = self.get(key)
            if hit is not None:
                return hit, False
            return self.put(key, build()), True


class BlobHomes:
    """digest -> (registry, repository) pairs known to hold the blob."""

    def __init__(self, root: Path | None = None, enabled: bool = True) -> None:
        self.root = root / "blob-homes" if root is not None else None
        self.enabled = enabled
        self._known: dict[Digest, list[tuple[str, str]]] = {}
        self._lock = threading.Lock()

    @classmethod
    def disabled(cls) -> BlobHomes:
        """Records nothing and knows nothing: a push that only mounts from its bundle's source."""
        return cls(None, enabled=False)

    def add(self, digest: Digest, registry: str, repository: str) -> None:
        if not self.enabled:
            return
        with self._lock:
            homes = self._known.setdefault(digest, [])
            if (registry, repository) in homes:
                return
            homes.append((registry, repository))
        if self.root is not None:
            path = self._path(digest, registry, repository)
            if not path.exists():
                _write_atomic(path, f"{registry}\n{repository}\n".encode())

    def forget(self, digest: Digest, registry: str, repository: str) -> None:
        """A home that did not mount (the blob or our access to it is gone there)."""
        with self._lock:
            homes = self._known.get(digest, [])
            if (registry, repository) in homes:
                homes.remove((registry, repository))
        if self.root is not None:
            self._path(digest, registry, repository).unlink(missing_ok=True)

    def candidates(self, digest: Digest, registry: str, repository: str) -> list[str]:
        """Other repositories of `registry` known to hold `digest`, most recently recorded first, a few at most."""
        if not self.enabled:
            return []
        with self._lock:
            homes = list(self._known.get(digest, []))
        if self.root is not None:
            homes += self._stored(digest)
        out: list[str] = []
        for reg, repo in reversed(homes):
            if reg == registry and repo != repository and repo not in out:
                out.append(repo)
        return out[:_MAX_HOMES]

    def _path(self, digest: Digest, registry: str, repository: str) -> Path:
        assert self.root is not None
        name = hashlib.sha256(f"{registry}\n{repository}".encode()).hexdigest()[:32]
        return self.root / digest.algorithm / digest.hex / name

    def _stored(self, digest: Digest) -> list[tuple[str, str]]:
        assert self.root is not None
        directory = self.root / digest.algorithm / digest.hex
        found: list[tuple[float, str, str]] = []
        try:
            entries = [p for p in directory.iterdir() if not p.name.startswith(".tmp-")]
        except OSError:
            return []
        for path in entries:
            try:
                lines = path.read_text().splitlines()
                mtime = path.stat().st_mtime
            except OSError:
                continue
            if len(lines) == 2 and all(lines):
                found.append((mtime, lines[0], lines[1]))
        return [(reg, repo) for _, reg, repo in sorted(found)]


def _write_atomic(path: Path, data: bytes) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    except OSError:
        return  # a record we cannot write only costs an upload later
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.replace(tmp, path)
    except OSError:
        Path(tmp).unlink(missing_ok=True)


_process_homes = BlobHomes()


def process_homes() -> BlobHomes:
    """The record every push of this process shares when its caller passes none."""
    return _process_homes
