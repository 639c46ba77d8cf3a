"""A content-addressed file cache that many processes, on one host or several sharing a directory, use at once.

Blobs live under `sha256/<2>/<hex>`, derived artefacts (parsed indexes, layer records) under `derived/<name>`.

* Publication is atomic: an entry is written to a `.tmp-` file in its final directory, verified, then renamed
  (rename is atomic on local file systems and on NFS), so no reader ever opens a half-written entry.
* Entries are verified on read, once per process: a blob is hashed against its own name the first time a process
  uses it; a derived entry written by `write_named` has its sha256 in `derived-sums/<name>`, checked the same way.
  A marker written after a verified download would cost nothing on read, but would not catch what happens to the
  file afterwards (a host crash before the data reached shared storage, a bad disk, a stray write); hashing once
  per process costs about a millisecond per MB, small beside the download and parsing it saves. A corrupt entry is
  removed and reported as absent, so the caller fetches or builds it again: it is never served.
* Use is recorded in the entry's mtime (atime is often off: noatime mounts). The total size is bounded
  (`COPA_CACHE_MAX_BYTES`, default 20 GiB): after writing, a process sweeps the cache when it has published a
  twentieth of the bound since its last sweep, removing least recently used entries down to 90% of the bound.
  An entry used in the last `grace` seconds is never removed, so a process that looked an entry up can still open
  it (a reader on another NFS client has no unlink-while-open protection); the bound is therefore soft while
  everything in the cache is in use. One sweeper at a time, through an exclusive-create lock file (O_EXCL works
  on NFS v3 and later). Stale `.tmp-` files of killed processes are removed once untouched for `tmp_max_age`
  (a live writer modifies its file with every chunk).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from copa.errors import IntegrityError, LocalIOError, UsageError

_CHUNK = 1 << 20
DEFAULT_MAX_BYTES = 20 << 30
GRACE = 600.0  # seconds an entry stays safe from eviction after its last use
TMP_MAX_AGE = 3600.0  # seconds after which an untouched .tmp- file belongs to a dead process
_TOUCH_EVERY = 60.0  # a used entry's mtime is refreshed at most this often (one metadata write, not one per use)
_LOW_WATER = 0.9
_LOCK_STALE = 600.0
_TMP = ".tmp-"
_SUMS = "derived-sums"
_LOCK = ".evict.lock"
_SUFFIXES = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def default_cache_dir() -> Path:
    env = os.environ.get("COPA_CACHE_DIR")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "copa"


def parse_size(text: str, what: str = "COPA_CACHE_MAX_BYTES") -> int:
    """Bytes from `10737418240`, `500M`, `20G` (binary units); a UsageError names the bad value."""
    value = text.strip().upper().removesuffix("IB").removesuffix("B")
    unit = value[-1:] if value[-1:] in _SUFFIXES else ""
    number = value[: len(value) - len(unit)]
    if not number.isdigit() or int(number) <= 0:
        raise UsageError(f"{what}={text!r} is not a size; give bytes or a number with K, M, G or T (e.g. 20G)")
    return int(number) * _SUFFIXES[unit]


def default_max_bytes() -> int:
    env = os.environ.get("COPA_CACHE_MAX_BYTES")
    return parse_size(env) if env else DEFAULT_MAX_BYTES


# What this process has verified: (path, inode, size). A process trusts an entry it hashed once; a file replaced
# since (new inode) or truncated is hashed again. Shared by every Cache of the process (each run makes its own).
_verified: set[tuple[str, int, int]] = set()
_verified_lock = threading.Lock()
# Bytes this process published per cache root since it last swept that root.
_published: dict[str, int] = {}


@dataclass(frozen=True, slots=True)
class Usage:
    """What a sweep found and did."""

    files: int
    bytes: int
    removed: int
    removed_bytes: int
    stale_tmp: int


class Cache:
    def __init__(self, root: Path | None = None, max_bytes: int | None = None, grace: float = GRACE,
                 tmp_max_age: float = TMP_MAX_AGE) -> None:
        self.root = root if root is not None else default_cache_dir()
        self.max_bytes = max_bytes if max_bytes is not None else default_max_bytes()
        self.grace = grace
        self.tmp_max_age = tmp_max_age

    # -- blobs, by sha256 ----------------------------------------------------------------------

    def path_for(self, sha256: str) -> Path:
        return self.root / "sha256" / sha256[:2] / sha256

    def lookup(self, sha256: str, size: int | None) -> Path | None:
        """The verified entry, or None (absent, or corrupt and now removed)."""
        path = self.path_for(sha256)
        try:
            st = path.stat()
        except OSError:
            return None
        if size is not None and st.st_size != size:
            _discard(path, st)  # published only after a size check: a different size is damage
            return None
        if not self._verify(path, st, sha256):
            return None
        _touch(path, st)
        return path

    def store_stream(self, stream: BinaryIO, sha256: str, size: int | None, what: str) -> Path:
        """Copy `stream` into the cache, verifying size and sha256 before it becomes visible."""
        final = self.path_for(sha256)
        tmp = self._tmp_in(final.parent)
        try:
            hasher = hashlib.sha256()
            count = 0
            with os.fdopen(tmp[0], "wb") as out:
                while True:
                    chunk = stream.read(_CHUNK)
                    if not chunk:
                        break
                    count += len(chunk)
                    if size is not None and count > size:
                        raise IntegrityError(f"{what}: more than the expected {size} bytes; the source is corrupt")
                    hasher.update(chunk)
                    out.write(chunk)
            if size is not None and count != size:
                raise IntegrityError(f"{what}: got {count} bytes, expected {size}; the download is truncated")
            actual = hasher.hexdigest()
            if actual != sha256:
                raise IntegrityError(
                    f"{what}: sha256 mismatch, expected {sha256} but got {actual}; the repository or mirror "
                    "serves corrupt or tampered content"
                )
            os.replace(tmp[1], final)
        except BaseException:
            Path(tmp[1]).unlink(missing_ok=True)
            raise
        self._remember(final)
        self._account(count)
        return final

    def adopt(self, path: Path, sha256: str, size: int, what: str) -> Path:
        """Put a file this process wrote itself (its sha256 computed while writing) into the cache: hard-linked,
        without reading it again, where the cache shares its file system; else copied and verified as any stream."""
        final = self.path_for(sha256)
        fd, tmp = self._tmp_in(final.parent)
        os.close(fd)
        try:
            os.unlink(tmp)
            os.link(path, tmp)  # a new name for the same inode, in the cache's directory: then made visible at once
            if os.stat(tmp).st_size != size:
                raise IntegrityError(f"{what}: got {os.stat(tmp).st_size} bytes, expected {size}")
            os.replace(tmp, final)
        except OSError:  # another file system (EXDEV), or links not allowed: copy it
            Path(tmp).unlink(missing_ok=True)
            with path.open("rb") as f:
                return self.store_stream(f, sha256, size, what)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        self._remember(final)
        self._account(size)
        return final

    # -- derived entries, by name --------------------------------------------------------------

    def store_named(self, name: str, data: bytes) -> Path:
        """Store a small derived artefact under a caller-chosen name."""
        return self.write_named(name, lambda out: out.write(data))

    def write_named(self, name: str, write: Callable[[BinaryIO], object]) -> Path:
        """Store a derived artefact (e.g. a parsed index) written by `write`, all or nothing, with its sha256 in
        `derived-sums/` so that readers verify it. The sum goes first: a reader that finds the entry finds its
        sum; two writers racing with different bytes at worst leave a mismatch, which readers remove."""
        final = self.named(name)
        fd, tmp = self._tmp_in(final.parent)
        hasher = _HashingWriter()
        try:
            with os.fdopen(fd, "wb") as raw:
                hasher.out = raw
                write(hasher)  # type: ignore[arg-type]  # a write-only file object is all writers use
            digest = hasher.hash.hexdigest()
            self._write_sum(name, digest)
            os.replace(tmp, final)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        self._remember(final)
        self._account(hasher.count)
        return final

    def named(self, name: str) -> Path:
        """The path of a derived entry. If it exists with a sum that does not match, it is removed first (callers
        test `.is_file()` and rebuild); an entry without a sum is one its writer verifies itself (apk packages)."""
        path = self.root / "derived" / name
        try:
            st = path.stat()
        except OSError:
            return path
        sum_path = self._sum_path(name)
        try:
            expected = sum_path.read_text().strip()
        except OSError:
            _touch(path, st)
            return path
        if self._verify(path, st, expected):
            _touch(path, st)
        return path

    # -- eviction --------------------------------------------------------------------------------

    def evict(self, max_bytes: int | None = None) -> Usage | None:
        """Remove stale temporary files and the least recently used entries beyond the bound. None when another
        process is sweeping right now."""
        bound = self.max_bytes if max_bytes is None else max_bytes
        lock = self.root / _LOCK
        if not _take_lock(lock):
            return None
        try:
            return self._sweep(bound)
        finally:
            lock.unlink(missing_ok=True)

    def _sweep(self, bound: int) -> Usage:
        now = time.time()
        entries: list[tuple[float, int, Path]] = []
        stale = 0
        for path, st in _files(self.root):
            if path.name.startswith(_TMP):
                if now - st.st_mtime > self.tmp_max_age:
                    path.unlink(missing_ok=True)
                    stale += 1
                continue
            if path.name == _LOCK or path.relative_to(self.root).parts[0] == _SUMS:
                continue  # sums are tiny and go with their entries
            entries.append((st.st_mtime, st.st_size, path))
        total = sum(size for _, size, _ in entries)
        removed = removed_bytes = 0
        if total > bound:
            target = int(bound * _LOW_WATER)
            for mtime, size, path in sorted(entries, key=lambda e: e[0]):
                if total <= target:
                    break
                if now - mtime < self.grace:
                    break  # sorted: everything after this was used as recently
                self._remove(path)
                total -= size
                removed += 1
                removed_bytes += size
        return Usage(len(entries) - removed, total, removed, removed_bytes, stale)

    def _remove(self, path: Path) -> None:
        path.unlink(missing_ok=True)
        derived = self.root / "derived"
        if path.is_relative_to(derived):
            self._sum_path(str(path.relative_to(derived))).unlink(missing_ok=True)

    def _account(self, count: int) -> None:
        key = str(self.root)
        with _verified_lock:
            done = _published.get(key)
            _published[key] = (done or 0) + count
            due = done is None or _published[key] >= self.max_bytes // 20
            if due:
                _published[key] = 0
        if due:
            self.evict()

    # -- helpers -----------------------------------------------------------------------------------

    def _sum_path(self, name: str) -> Path:
        return self.root / _SUMS / name

    def _write_sum(self, name: str, digest: str) -> None:
        final = self._sum_path(name)
        fd, tmp = self._tmp_in(final.parent)
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(digest.encode())
            os.replace(tmp, final)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def _verify(self, path: Path, st: os.stat_result, sha256: str) -> bool:
        key = (str(path), st.st_ino, st.st_size)
        with _verified_lock:
            if key in _verified:
                return True
        try:
            actual = _hash_file(path)
        except OSError:
            return False
        if actual != sha256:
            _discard(path, st)
            if path.is_relative_to(self.root / "derived"):
                self._sum_path(str(path.relative_to(self.root / "derived"))).unlink(missing_ok=True)
            return False
        with _verified_lock:
            _verified.add(key)
        return True

    def _remember(self, path: Path) -> None:
        try:
            st = path.stat()
        except OSError:
            return
        with _verified_lock:
            _verified.add((str(path), st.st_ino, st.st_size))

    def _tmp_in(self, directory: Path) -> tuple[int, str]:
        try:
            directory.mkdir(parents=True, exist_ok=True)
            return tempfile.mkstemp(dir=directory, prefix=_TMP)
        except OSError as e:
            raise LocalIOError(
                f"cannot write to cache directory {directory}: {e.strerror}; set COPA_CACHE_DIR to a writable path"
            ) from e


class _HashingWriter:
    """The file object `write_named` hands its writer: hashes and counts what passes through."""

    def __init__(self) -> None:
        self.hash = hashlib.sha256()
        self.count = 0
        self.out: BinaryIO | None = None

    def write(self, data: bytes | bytearray | memoryview) -> int:
        assert self.out is not None
        self.hash.update(data)
        self.count += len(data)
        return self.out.write(data)

    def flush(self) -> None:
        assert self.out is not None
        self.out.flush()


def _hash_file(path: Path) -> str:
    hasher = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            hasher.update(chunk)
    return hasher.hexdigest()


def _discard(path: Path, st: os.stat_result) -> None:
    """Remove a damaged entry unless another process has just published a fresh one under the name."""
    try:
        if path.stat().st_ino == st.st_ino:
            path.unlink()
    except OSError:
        pass  # gone already, or not ours to remove: either way it is not served


def _touch(path: Path, st: os.stat_result) -> None:
    now = time.time()
    if now - st.st_mtime > _TOUCH_EVERY:
        # A read-only shared cache still serves; its entries just age.
        with contextlib.suppress(OSError):
            os.utime(path, (now, now))


def _take_lock(lock: Path) -> bool:
    for _ in range(2):
        try:
            lock.parent.mkdir(parents=True, exist_ok=True)
            os.close(os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
            return True
        except FileExistsError:
            try:
                if time.time() - lock.stat().st_mtime < _LOCK_STALE:
                    return False
                lock.unlink()  # its sweeper died: take over
            except OSError:
                return False
        except OSError:
            return False
    return False


def _files(root: Path) -> Iterator[tuple[Path, os.stat_result]]:
    stack = [root]
    while stack:
        directory = stack.pop()
        try:
            with os.scandir(directory) as it:
                for entry in it:
                    try:
                        if entry.is_dir(follow_symlinks=False):
                            stack.append(Path(entry.path))
                        elif entry.is_file(follow_symlinks=False):
                            yield Path(entry.path), entry.stat(follow_symlinks=False)
                    except OSError:
                        continue  # removed while we looked
        except OSError:
            continue
