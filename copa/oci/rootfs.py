"""A read-only merged view of an image's layers.

Layers are read from the top down, applying OCI whiteouts (`.wh.<name>` hides a path in lower layers,
`.wh..wh..opq` hides a directory's lower contents). Two uses:

* `read_files`: fetch a few named files (and the files under a few directories), stopping as soon as
  everything asked for is found; symlinks, including symlinked parent directories, are resolved
  inside the image root and hardlinks followed.
* `scan`: an index of every path's node (type, mode, owner, link target) without file contents, which
  adapters use to map package paths through the image's directory symlinks and to see what exists.
"""

from __future__ import annotations

import bisect
import functools
import json
import posixpath
import tarfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field

from copa import events
from copa.errors import IntegrityError, UnsafePathError, UnsupportedImageError
from copa.oci.image import CORRUPT_STREAM, Image, decompressed
from copa.oci.layercache import LayerCache, LayerRecord, Member
from copa.oci.tarstream import TarMember, TarStream

_MAX_LINK_DEPTH = 40
_MAX_FILE = 256 << 20
_MAX_CAPTURED = 16 << 20  # larger files under a captured path are indexed but not kept in memory
# All captured contents held at once (the merged view's plus the layer being read). Real images hold a few MB (/etc,
# dpkg's status and info, an rpm database of up to ~100 MB); a crafted layer of thousands of 16 MiB files of zeros
# under /etc compresses 1000:1 and would otherwise fill memory (40 of them took 1.3 GB for a 650 KB layer).
MAX_CAPTURED_TOTAL = 256 << 20
_DRAIN = 1 << 20


def _norm(name: str) -> str:
    parts = [p for p in name.split("/") if p not in ("", ".")]
    return "/".join(parts)


def _member_path(name: str) -> str:
    """Where a layer's tar member lands, as umoci and containerd place it: the name cleaned lexically with the image
    root as '/', so `../x` and `etc/../../x` stay inside the root (`x`) instead of naming a path no runtime sees."""
    parts: list[str] = []
    for p in name.split("/"):
        if p == "..":
            if parts:
                parts.pop()
        elif p not in ("", "."):
            parts.append(p)
    return "/".join(parts)


@dataclass(frozen=True, slots=True)
class Node:
    path: str
    kind: str  # "file", "dir", "symlink", "hardlink", "other"
    mode: int
    uid: int
    gid: int
    size: int
    linkname: str
    layer: int  # index into image.layers of the layer that provides this path


def _kind(member: TarMember) -> str:
    if member.isreg():
        return "file"
    if member.isdir():
        return "dir"
    if member.issym():
        return "symlink"
    if member.islnk():
        return "hardlink"
    return "other"


@dataclass
class _Hiding:
    """Whiteouts and opaque directories seen in the layers above the one being read."""

    deleted: set[str] = field(default_factory=set)
    opaque: set[str] = field(default_factory=set)
    pending_deleted: set[str] = field(default_factory=set)
    pending_opaque: set[str] = field(default_factory=set)

    def note(self, path: str) -> bool:
        """Record a whiteout entry; True if `path` was one (and so is not a real file)."""
        base = posixpath.basename(path)
        if not base.startswith(".wh."):
            return False
        parent = posixpath.dirname(path)
        if base in (".wh.", ".wh..", ".wh..."):
            # A whiteout of '', '.' or '..' would delete its own directory or its parent (the root, from the top):
            # no tool writes one and umoci refuses it too.
            raise UnsupportedImageError(f"layer whiteout /{path} names {base[4:] or 'nothing'!r}, not an entry of "
                                        f"/{parent}: the layer is malformed; rebuild the image")
        if base == ".wh..wh..opq":
            self.pending_opaque.add(parent)
        else:
            self.pending_deleted.add(posixpath.join(parent, base[4:]))
        return True

    def replaced(self, member: TarMember, path: str) -> None:
        """A visible non-directory hides whatever lower layers have below its path (a lower directory it
        replaces and all its children), as overlayfs and every unpacker do."""
        self.replaced_kind(_kind(member), path)

    def replaced_kind(self, kind: str, path: str) -> None:
        if kind != "dir":
            self.pending_deleted.add(path)

    def hidden(self, path: str) -> bool:
        if not self.deleted and not self.opaque:
            return False  # the top layer, or nothing above hid anything: skip the walk up the parents
        if path in self.deleted:
            return True
        parent = posixpath.dirname(path)
        while True:
            if parent in self.opaque or parent in self.deleted:
                return True
            if not parent:
                return False
            parent = posixpath.dirname(parent)

    def next_layer(self) -> None:
        # Whiteouts only hide content in the layers *below* the one that carries them.
        self.deleted |= self.pending_deleted
        self.opaque |= self.pending_opaque
        self.pending_deleted.clear()
        self.pending_opaque.clear()


def _members(image: Image, index: int, drain: bool = False) -> Iterator[tuple[TarStream, TarMember]]:
    """The layer's tar members in stream order. With `drain`, the stream is read to its end after the last member,
    so the blob's digest has been checked (copa.oci.digest.VerifyingReader) once the iteration ends."""
    layer = image.layers[index]
    desc = layer.descriptor
    # Progress counts the compressed bytes read (what the descriptor's size measures), so the blob is opened here.
    label = f"layer {index + 1}/{len(image.layers)} {desc.digest.hex[:12]}"
    with events.task(events.Kind.LAYER_READ, label, desc.size) as task, \
            events.counted(image.source.open_blob(desc), task) as blob, \
            decompressed(blob, desc.media_type) as stream:
        try:
            with TarStream(stream) as tar:
                for member in tar:
                    yield tar, member
            if drain:
                # The decompressed stream to its end, then the blob's own (bytes after the compressed data, which
                # a decompressor may leave unread, are part of what the digest covers).
                while stream.read(_DRAIN):
                    pass
                while blob.read(_DRAIN):
                    pass
        except tarfile.TarError as e:
            raise UnsupportedImageError(f"layer {layer.descriptor.digest} is not a valid tar stream: {e}") from None
        except CORRUPT_STREAM as e:
            raise IntegrityError(f"layer {layer.descriptor.digest} does not decompress ({e or type(e).__name__}); "
                                 "the blob is damaged: push the image again") from None


@dataclass(frozen=True)
class View:
    """The merged index of an image's paths, with the contents of the files `scan` was asked to capture."""

    nodes: dict[str, Node]
    contents: dict[str, bytes] = field(default_factory=dict)

    def get(self, path: str) -> Node | None:
        return self.nodes.get(_norm(path))

    def read(self, path: str) -> bytes | None:
        """Content of a captured file, following symlinks and hardlinks; None if absent (or not captured)."""
        real = self.resolve(path)
        if self.nodes.get(real) is None:
            return None
        # A hardlink's content was captured under its own path, from its own layer (see `scan`).
        return self.contents.get(real)

    def under(self, prefix: str) -> dict[str, bytes]:
        """Captured regular files below a directory, keyed as if read through `prefix`, sorted."""
        asked = _norm(prefix)
        real = self.resolve(asked)
        out: dict[str, bytes] = {}
        for path in self.paths_below(real):
            content = self.read(path)
            if content is not None and self.nodes[path].kind in ("file", "hardlink"):
                out[asked + path[len(real):]] = content
        return out

    def paths_below(self, directory: str) -> list[str]:
        """The paths that start with `directory` + "/" (a normalised path), sorted: a range of the sorted paths,
        found by bisection. (Filtering every path of the image took a few ms per call, and a plan asks for a dozen
        directories.)"""
        ordered = self._sorted_paths
        prefix = directory + "/"
        out = []
        for i in range(bisect.bisect_left(ordered, prefix), len(ordered)):
            if not ordered[i].startswith(prefix):
                break
            out.append(ordered[i])
        return out

    @functools.cached_property
    def _sorted_paths(self) -> list[str]:
        # Computed once: a View's nodes are complete when scan() returns it and are not changed afterwards.
        return sorted(self.nodes)

    def is_symlink(self, path: str) -> bool:
        node = self.nodes.get(_norm(path))
        return node is not None and node.kind == "symlink"

    def resolve(self, path: str, follow_last: bool = True) -> str:
        """The real path of `path` inside the root, following symlinks as the kernel would with the
        image root as '/': absolute targets restart at the root and '..' never climbs above it."""
        return resolve_path(path, self._link, follow_last)

    def _link(self, path: str) -> str | None:
        node = self.nodes.get(path)
        return node.linkname if node is not None and node.kind == "symlink" else None


def resolve_path(path: str, link_of: Callable[[str], str | None], follow_last: bool = True) -> str:
    todo = [p for p in _norm(path).split("/") if p]
    done: list[str] = []
    depth = 0
    while todo:
        part = todo.pop(0)
        if part == "..":
            if done:
                done.pop()
            continue
        candidate = "/".join([*done, part])
        target = link_of(candidate) if (todo or follow_last) else None
        if target is None:
            done.append(part)
            continue
        depth += 1
        if depth > _MAX_LINK_DEPTH:
            raise UnsafePathError(f"too many levels of symlinks resolving /{path} in the image (a symlink loop): the "
                                  f"image is malformed; fix the link or rebuild the image")
        if target.startswith("/"):
            done = []
        todo = [p for p in target.split("/") if p not in ("", ".")] + todo
    return "/".join(done)


# Called once with the files captured so far, when the bottom layer's stream has gone past a directory: the
# caller can start work that needs that directory's files (e.g. repository downloads) while the scan goes on.
EarlyHook = tuple[str, Callable[[Mapping[str, bytes]], None]]


def scan(image: Image, upto: int | None = None, capture: Iterable[str] = (), early: EarlyHook | None = None,
         large: Iterable[str] = (), cache: LayerCache | None = None) -> View:
    """Index every visible path of the image (layers [0, upto) when `upto` is given), keeping the contents
    of regular files at or below the `capture` paths (package databases, /etc): one pass over each layer
    serves every later lookup.

    `early`: (directory, callback). Layers are read top down, so once the bottom layer's members sort past the
    directory the captured files under it are final, if the layer is in sorted order as build tools write
    them; the callback must treat what it gets as a hint (the View returned is what counts).
    `large`: captured paths whose files are kept up to _MAX_FILE instead of _MAX_CAPTURED (package databases that
    are one big file, such as an rpm database).
    `cache`: records of what each layer held (copa.oci.layercache), by the layer blob's digest: a layer already
    recorded for the same capture spec is not read again; a layer read here is recorded once its blob was read to
    the end and matched that digest."""
    count = len(image.layers) if upto is None else upto
    early_dir, early_call = (_norm(early[0]), early[1]) if early is not None else ("", None)
    prefixes = tuple(_norm(p) for p in capture)
    big = tuple(_norm(p) for p in large)
    spec = json.dumps([sorted(set(prefixes)), sorted(set(big)), _MAX_CAPTURED, _MAX_FILE])
    hiding = _Hiding()
    nodes: dict[str, Node] = {}
    contents: dict[str, bytes] = {}
    whiteouts: list[tuple[str, int]] = []  # (path, layer): re-applied through symlinks at the end
    for index in reversed(range(count)):
        # Records are keyed by the blob's digest, which every source checks as the blob is read: what the layer
        # holds follows from it. (Keyed by the config's diff_id, each record had to hash the uncompressed stream too,
        # ~0.1 s per 200 MB of layer.)
        blob = image.layers[index].descriptor.digest
        record = cache.get(blob, spec) if cache is not None else None
        recording: list[Member] | None = [] if cache is not None and record is None else None
        members = iter(record.members) if record is not None else _live(image, index, prefixes, big, recording)
        # A hardlink's content is its target's *in the same layer*: an upper layer may have replaced the target
        # path in the merged view since. So this layer's captured files are kept, hidden or not, until it ends.
        local: dict[str, bytes] = {}
        elsewhere: dict[str, list[str]] = {}  # hardlink target outside the captured paths -> captured links
        unresolved: set[str] = set()  # the same for every link of the layer, visible or not: what a record keeps
        held = sum(map(len, contents.values()))
        for m in members:
            path = m.path
            if early_call is not None and index == 0 and path > early_dir and not path.startswith(early_dir + "/"):
                early_call(dict(contents))
                early_call = None
            if hiding.note(path):
                whiteouts.append((path, index))
                continue
            # Only a hardlink needs to know whether it is captured (its content is its target's): asked only then.
            captured = m.kind == "hardlink" and _at_or_under(path, prefixes)
            if m.content is not None:
                local[path] = m.content
                held += len(m.content)
                if held > MAX_CAPTURED_TOTAL:
                    raise UnsupportedImageError(
                        f"the image's files under {', '.join('/' + p for p in prefixes)} hold more than "
                        f"{MAX_CAPTURED_TOTAL} bytes (at /{path} in layer {index + 1}); no image's configuration and "
                        f"package database are that large: the image is malformed")
            else:
                local.pop(path, None)  # a later entry of the path (a link, a directory) replaced its content
            if recording is not None and captured and _norm(m.linkname) not in local:
                unresolved.add(_norm(m.linkname))
            # An upper layer's entry stays; a second entry of one path in the same layer replaces the first, as
            # extracting the tar in order (every unpacker, umoci) leaves the last one.
            existing = nodes.get(path)
            if (existing is not None and existing.layer != index) or hiding.hidden(path):
                continue
            if existing is not None:
                hiding.pending_deleted.discard(path)
                contents.pop(path, None)
            hiding.replaced_kind(m.kind, path)
            nodes[path] = Node(path, m.kind, m.mode, m.uid, m.gid, m.size, m.linkname, index)
            if path in local:
                contents[path] = local[path]
            elif captured:
                target = _norm(m.linkname)
                if target in local:
                    contents[path] = local[target]
                else:
                    elsewhere.setdefault(target, []).append(path)
        if record is not None:
            targets = record.targets
        elif elsewhere or unresolved:
            targets = _capture_targets(image, index, set(elsewhere) | unresolved)
        else:
            targets = {}
        for target, links in elsewhere.items():
            if target in targets:
                for link in links:
                    contents[link] = targets[target]
        if cache is not None and recording is not None:
            cache.put(blob, spec, LayerRecord(tuple(recording), {t: targets[t] for t in unresolved if t in targets}))
        hiding.next_layer()
    _through_symlinks(nodes, contents, whiteouts)
    return View(nodes, contents)


def _through_symlinks(nodes: dict[str, Node], contents: dict[str, bytes], whiteouts: list[tuple[str, int]]) -> None:
    """Re-file what a layer wrote below a path the merged image has as a symlink (`etc/os-release` over a lower
    layer's `etc -> usr/etc`) where runtimes put it: through the link, resolved inside the root (umoci's and
    containerd's securejoin), over what a lower layer had there; the same for whiteouts. Build tools write real
    paths, so this is rare; it keeps a crafted layer from showing copa another file than a container would see."""
    links = {p for p, n in nodes.items() if n.kind == "symlink"}
    if not links:
        return

    beneath: dict[str, bool] = {"": False}  # directory -> whether it or a parent is a symlink; thousands of paths
                                             # share a few hundred directories

    def under_link(path: str) -> bool:
        climbed = []
        parent = posixpath.dirname(path)
        while parent not in beneath:
            if parent in links:
                beneath[parent] = True
                break
            climbed.append(parent)
            parent = posixpath.dirname(parent)
        found = beneath[parent]
        for directory in climbed:
            beneath[directory] = found
        return found

    def link_of(path: str) -> str | None:
        node = nodes.get(path)
        return node.linkname if node is not None and node.kind == "symlink" else None

    for path, index in whiteouts:
        if not under_link(path):
            continue
        parent, base = posixpath.split(path)
        real_parent = resolve_path(parent, link_of)
        gone = real_parent if base == ".wh..wh..opq" else posixpath.join(real_parent, base[4:])
        for victim in [p for p in nodes if (p == gone and base != ".wh..wh..opq") or p.startswith(gone + "/")]:
            if nodes[victim].layer < index:
                del nodes[victim]
                contents.pop(victim, None)
    # Upper layers first, so that of two entries landing on one real path the upper one stays.
    for path in sorted((p for p in nodes if under_link(p)), key=lambda p: -nodes[p].layer):
        node = nodes.pop(path)
        content = contents.pop(path, None)
        real = posixpath.join(resolve_path(posixpath.dirname(path), link_of), posixpath.basename(path))
        kept = nodes.get(real)
        if kept is not None and kept.layer > node.layer:
            continue
        nodes[real] = Node(real, node.kind, node.mode, node.uid, node.gid, node.size, node.linkname, node.layer)
        if content is not None:
            contents[real] = content
        else:
            contents.pop(real, None)


def _content(image: Image, index: int, tar: TarStream, member: TarMember) -> bytes | None:
    """A member's bytes. Read here, in the consumer of _members, so a tar cut inside a member (its header claims
    more than the stream holds) fails here: _members' own handler does not see what its caller reads."""
    f = tar.extractfile(member)
    if f is None:
        return None
    try:
        return f.read()
    except tarfile.TarError as e:
        raise UnsupportedImageError(f"layer {image.layers[index].descriptor.digest} is not a valid tar stream: {e}"
                                    ) from None
    except CORRUPT_STREAM as e:
        raise IntegrityError(f"layer {image.layers[index].descriptor.digest} does not decompress "
                             f"({e or type(e).__name__}); the blob is damaged: push the image again") from None


def _live(image: Image, index: int, prefixes: tuple[str, ...], big: tuple[str, ...],
          recording: list[Member] | None) -> Iterator[Member]:
    """The layer's members as scan uses them, read from the blob (and appended to `recording`: then the blob is
    read to its end, so that a record is only ever made of a blob whose digest matched)."""
    for tar, member in _members(image, index, drain=recording is not None):
        path = _member_path(member.name)
        if not path:
            continue
        content = None
        limit = _MAX_FILE if big and _at_or_under(path, big) else _MAX_CAPTURED
        if member.isreg() and member.size <= limit and _at_or_under(path, prefixes):
            content = _content(image, index, tar, member)
        m = Member(path, _kind(member), member.mode, member.uid, member.gid, member.size, member.linkname, content)
        if recording is not None:
            recording.append(m)
        yield m


def _capture_targets(image: Image, index: int, targets: set[str]) -> dict[str, bytes]:
    """A second read of one layer for hardlink targets outside the captured paths (rare: links usually stay
    within one directory tree)."""
    found: dict[str, bytes] = {}
    # Read to the end: this second read of the blob is checked against its digest too, before its files are used.
    for tar, member in _members(image, index, drain=True):
        path = _member_path(member.name)
        if path in targets and member.isreg() and member.size <= _MAX_CAPTURED:
            content = _content(image, index, tar, member)
            if content is not None:
                found[path] = content
    return found


def _at_or_under(path: str, prefixes: tuple[str, ...]) -> bool:
    return path.startswith(_with_slashes(prefixes)) or path in prefixes


@functools.lru_cache(maxsize=64)
def _with_slashes(prefixes: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(p + "/" for p in prefixes)


@dataclass(frozen=True)
class Files:
    """Contents read by `read_files`, keyed by the path that was asked for (or found under a prefix)."""

    contents: dict[str, bytes]

    def get(self, path: str) -> bytes | None:
        return self.contents.get(_norm(path))

    def under(self, prefix: str) -> dict[str, bytes]:
        pre = _norm(prefix) + "/"
        return {p: c for p, c in sorted(self.contents.items()) if p.startswith(pre)}


def read_files(image: Image, paths: Iterable[str] = (), prefixes: Iterable[str] = (), upto: int | None = None) -> Files:
    """Read the named files and every regular file under the named directories, merged across layers.

    Each pass reads top-down; what turned out to be a symlink or hardlink is looked up again at its
    real location in a further pass, and filed under the name that was asked for.
    """
    count = len(image.layers) if upto is None else upto
    files = {_norm(p): _norm(p) for p in paths}  # asked-for name -> where to look now
    dirs = {_norm(p): _norm(p) for p in prefixes}
    out: dict[str, bytes] = {}
    for _ in range(_MAX_LINK_DEPTH):
        found, links, hardlinks = _read_pass(image, set(files.values()), set(dirs.values()), count)
        next_files: dict[str, str] = {}
        next_dirs: dict[str, str] = {}
        for asked, where in files.items():
            if where in found:
                out[asked] = found[where]
            elif where in hardlinks:
                next_files[asked] = hardlinks[where]
            elif (real := resolve_path(where, links.get)) != where:
                next_files[asked] = real
        for asked, where in dirs.items():
            for path, content in found.items():
                if path.startswith(where + "/"):
                    out[asked + path[len(where):]] = content
            for path, target in hardlinks.items():
                if path.startswith(where + "/"):
                    next_files[asked + path[len(where):]] = target
            if (real := resolve_path(where, links.get)) != where:
                next_dirs[asked] = real
        if not next_files and not next_dirs:
            break
        files, dirs = next_files, next_dirs
    return Files(out)


def _under_any(path: str, dirs: set[str]) -> bool:
    return any(path.startswith(d + "/") for d in dirs)


def _ancestors(path: str) -> Iterator[str]:
    parent = posixpath.dirname(path)
    while parent:
        yield parent
        parent = posixpath.dirname(parent)


def _read_pass(
    image: Image, wanted: set[str], dirs: set[str], count: int
) -> tuple[dict[str, bytes], dict[str, str], dict[str, str]]:
    """One top-down pass. Returns file contents, symlinks met on the way to what was asked, and
    hardlinks (path -> target path) among what was asked."""
    interesting = set(wanted) | dirs
    for p in list(interesting):
        interesting.update(_ancestors(p))
    hiding = _Hiding()
    seen: dict[str, int] = {}  # path -> the layer whose entry stays
    found: dict[str, bytes] = {}
    links: dict[str, str] = {}
    hardlinks: dict[str, str] = {}
    for index in reversed(range(count)):
        for tar, member in _members(image, index):
            path = _member_path(member.name)
            # An upper layer's entry stays; in one layer the last entry of a path does (extraction order).
            if not path or hiding.note(path) or seen.get(path, index) != index or hiding.hidden(path):
                continue
            hiding.replaced(member, path)
            asked = path in wanted or _under_any(path, dirs)
            if not asked and path not in interesting:
                continue
            seen[path] = index
            found.pop(path, None)
            links.pop(path, None)
            hardlinks.pop(path, None)
            if member.issym():
                links[path] = member.linkname
            elif asked and member.islnk():
                hardlinks[path] = _norm(member.linkname)
            elif asked and member.isreg():
                if member.size > _MAX_FILE:
                    raise UnsupportedImageError(f"/{path} in the image is {member.size} bytes; too large to read")
                f = tar.extractfile(member)
                if f is not None:
                    found[path] = f.read()
        hiding.next_layer()
        if not dirs and wanted <= seen.keys():
            break  # everything asked for is known: lower layers cannot change it
    return found, links, hardlinks
