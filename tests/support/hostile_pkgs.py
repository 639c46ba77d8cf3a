"""A hostile package corpus for .deb, .apk and .rpm, generated on demand, and the harness that serves each case from
a signed repository and runs `copa patch` against it.

Packages are made by the real tools where the tools can make the case (dpkg-deb --build of a prepared tree with
set-uid files, fifos, device nodes; rpmbuild) and as raw bytes written here where the tools refuse (tar members
named `../x`, hard links to nothing, lying sizes, ar archives with two data members, cpio names with NUL...).
Each case is named after its attack; the repository that serves it is signed with the test's key (apt: InRelease
by pysequoia; apk: APKINDEX by RSA; rpm: createrepo_c metadata), so copa gets past the index checks and meets the
hostile bytes in its package readers, unless the case attacks the index itself.

    tar_bytes([Member("../etc/evil", data=b"x")])          # raw tar, PAX
    deb_bytes(control("app", "2.0"), data_tar)              # ar + control.tar.xz + data.tar.xz
    run = run_copa([...], scratch)                          # subprocess, limits, wall time, peak RSS, TMPDIR check
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import lzma
import os
import resource
import shutil
import signal
import struct
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import zstandard

from tests.support.hostile_cli import _sample_peak

ROOT = Path(__file__).resolve().parents[2]
MTIME = 1704067200

# Bounds every hostile run must stay under (the README states them). A patch of the tiny test images takes 1-2 s and
# 55-75 MiB of its own (measured over the whole corpus: at most 2.0 s; 182 MiB for the .apk control bomb, whose
# control segment is held in memory up to its 64 MiB limit); the margin is for a loaded CI machine. A case that
# needs more than this is a bomb copa failed to stop.
CASE_SECONDS = 30.0  # wall time of one `copa patch` (the subprocess is killed past it)
CASE_RSS = 256 << 20  # peak resident memory of one `copa patch` (its own VmHWM)
CASE_ADDRESS_SPACE = 6 << 30  # RLIMIT_AS of the child: a runaway allocation fails instead of swapping the machine
CASE_FILE_SIZE = 4 << 30  # RLIMIT_FSIZE of the child: no single file written may grow past this


# --------------------------------------------------------------------------------------------------- tar and ar


@dataclass(frozen=True)
class Member:
    """One tar member as the attack wants it. `name` may be bytes (invalid UTF-8); `size` overrides the header's
    size field without writing that many bytes (a lie); `pax` adds PAX records (a `path` record wins over `name`)."""

    name: str | bytes
    kind: str = "file"  # file, dir, symlink, hardlink, fifo, chardev, blockdev
    data: bytes = b""
    linkname: str = ""
    mode: int = 0o644
    size: int | None = None
    pax: Mapping[str, str] = field(default_factory=dict)
    uid: int = 0
    gid: int = 0


_TYPES = {"file": tarfile.REGTYPE, "dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE, "hardlink": tarfile.LNKTYPE,
          "fifo": tarfile.FIFOTYPE, "chardev": tarfile.CHRTYPE, "blockdev": tarfile.BLKTYPE}


def member_bytes(m: Member, fmt: int = tarfile.PAX_FORMAT) -> bytes:
    name = m.name.decode("utf-8", "surrogateescape") if isinstance(m.name, bytes) else m.name
    info = tarfile.TarInfo(name)
    info.type = _TYPES[m.kind]
    info.mode, info.mtime, info.uid, info.gid = m.mode, MTIME, m.uid, m.gid
    info.uname = info.gname = "root"
    info.linkname = m.linkname
    info.size = len(m.data) if m.kind == "file" else 0
    if m.kind in ("chardev", "blockdev"):
        info.devmajor, info.devminor = 1, 3  # /dev/null's numbers
    info.pax_headers = dict(m.pax)
    if m.size is not None:
        info.size = m.size
    header = info.tobuf(format=fmt, encoding="utf-8", errors="surrogateescape")
    return header + m.data + b"\0" * (-len(m.data) % 512)


def tar_bytes(members: Sequence[Member], *, end: bool = True, fmt: int = tarfile.PAX_FORMAT) -> bytes:
    return b"".join(member_bytes(m, fmt) for m in members) + (b"\0" * 1024 if end else b"")


def ar_bytes(members: Sequence[tuple[str, bytes]]) -> bytes:
    """A System V ar archive as dpkg-deb writes it (names with a trailing '/'? no: dpkg writes plain names)."""
    out = bytearray(b"!<arch>\n")
    for name, data in members:
        out += f"{name:<16}{MTIME:<12}{0:<6}{0:<6}{0o100644:<8o}{len(data):<10}`\n".encode()
        out += data + (b"\n" if len(data) % 2 else b"")
    return bytes(out)


def compress(data: bytes, how: str) -> bytes:
    if how == "xz":
        return lzma.compress(data, preset=6)
    if how == "gz":
        return gzip.compress(data, mtime=0)
    if how == "zst":
        return zstandard.ZstdCompressor(level=19).compress(data)
    if how == "":
        return data
    raise ValueError(how)


_PIECE = 64 << 20  # zeros compressed once, the compressed piece repeated: a bomb of any size in milliseconds


@functools.cache
def _zeros_piece(how: str) -> bytes:
    return compress(bytes(_PIECE), how) if how != "xz" else lzma.compress(bytes(_PIECE), preset=0)


def bomb_stream(prefix: bytes, size: int, how: str) -> bytes:
    """`prefix` then `size` zero bytes (rounded up to 64 MiB pieces) then two zero tar blocks, compressed with `how`
    ("xz", "gz", "zst") as concatenated streams (every reader of these formats reads on across them: xz and zstd
    frames, gzip members), never holding the zeros in memory: about 1000:1 (gzip) to 7000:1 (xz)."""
    pieces = -(-size // _PIECE)
    return compress(prefix, how) + _zeros_piece(how) * pieces + compress(bytes(1024), how)


def bomb_tar(name: str, size: int, how: str) -> bytes:
    """A compressed tar whose one member `name` is `size` zero bytes (a multiple of 64 MiB)."""
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = size, 0o644, MTIME
    return bomb_stream(info.tobuf(format=tarfile.PAX_FORMAT), size, how)


# --------------------------------------------------------------------------------------------------- .deb


def control_text(name: str, version: str, arch: str = "amd64", **extra: str) -> str:
    fields = {"Package": name, "Version": version, "Architecture": arch,
              "Maintainer": "copa tests <tests@example.invalid>", "Installed-Size": "1", **extra,
              "Description": "hostile test package\n built by tests/support/hostile_pkgs.py"}
    return "".join(f"{k}: {v}\n" for k, v in fields.items())


def control_tar(control: str, extra: Mapping[str, bytes] | None = None) -> bytes:
    members = [Member("./", kind="dir", mode=0o755), Member("./control", data=control.encode())]
    members += [Member(f"./{n}", data=d) for n, d in (extra or {}).items()]
    return tar_bytes(members)


def deb_bytes(control: str, data_tar: bytes, *, compression: str = "xz", members: Sequence[tuple[str, bytes]] = (),
              data_compressed: bytes | None = None) -> bytes:
    """debian-binary, control.tar.xz, data.tar.<compression> (or `data_compressed` verbatim), then `members`."""
    data = data_compressed if data_compressed is not None else compress(data_tar, compression)
    suffix = f".{compression}" if compression else ""
    return ar_bytes([("debian-binary", b"2.0\n"), ("control.tar.xz", compress(control_tar(control), "xz")),
                     (f"data.tar{suffix}", data), *members])


@dataclass(frozen=True)
class TreeFile:
    """A path of a tree dpkg-deb builds: a regular file (`data`), "dir", "symlink" (to `target`), "fifo",
    "chardev"; `mode` applied with chmod (set-uid bits included)."""

    path: str
    data: bytes = b""
    kind: str = "file"
    mode: int = 0o644
    target: str = ""


def dpkg_deb(control: str, files: Sequence[TreeFile], work: Path) -> bytes:
    """The real `dpkg-deb --root-owner-group --build` of a prepared tree."""
    tree = work / "tree"
    shutil.rmtree(tree, ignore_errors=True)
    (tree / "DEBIAN").mkdir(parents=True)
    (tree / "DEBIAN" / "control").write_text(control)
    for f in files:
        p = tree / f.path
        p.parent.mkdir(parents=True, exist_ok=True)
        if f.kind == "dir":
            p.mkdir(exist_ok=True)
        elif f.kind == "symlink":
            p.symlink_to(f.target)
            continue
        elif f.kind == "fifo":
            os.mkfifo(p)
        elif f.kind == "chardev":
            os.mknod(p, 0o600 | 0o020000, os.makedev(1, 3))
        else:
            p.write_bytes(f.data)
        os.chmod(p, f.mode)
    out = work / "out.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "-Zxz", "--build", str(tree), str(out)], check=True,
                   capture_output=True)
    data = out.read_bytes()
    shutil.rmtree(tree)
    out.unlink()
    return data


def packages_stanza(control: str, filename: str, deb: bytes, **override: str) -> str:
    """The Packages paragraph dpkg-scanpackages writes for `deb` (its control fields, Filename, Size, SHA256),
    with `override` replacing fields (an index that lies)."""
    fields: dict[str, str] = {}
    for line in control.splitlines():
        if line[:1] in (" ", "\t") or ":" not in line:
            continue
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    fields.pop("Description", None)
    fields |= {"Filename": filename, "Size": str(len(deb)), "MD5sum": hashlib.md5(deb).hexdigest(),
               "SHA256": hashlib.sha256(deb).hexdigest()}
    fields |= override
    fields["Description"] = "hostile test package"
    return "".join(f"{k}: {v}\n" for k, v in fields.items())


# --------------------------------------------------------------------------------------------------- running copa


@dataclass(frozen=True)
class Run:
    code: int
    stdout: str
    stderr: str
    seconds: float
    peak_rss: int  # bytes: the copa process's own VmHWM, sampled while it runs
    killed: bool

    def error_line(self) -> str:
        """The one `copa: error:` line; every other stderr line must be a progress line, and no traceback."""
        assert "Traceback" not in self.stderr, self.stderr
        lines = self.stderr.strip().splitlines()
        errors = [line for line in lines if line.startswith("copa: error: ")]
        assert len(errors) == 1 and lines[-1] == errors[0], self.stderr
        return errors[0]


def _limits() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (CASE_ADDRESS_SPACE, CASE_ADDRESS_SPACE))
    resource.setrlimit(resource.RLIMIT_FSIZE, (CASE_FILE_SIZE, CASE_FILE_SIZE))
    os.setsid()


def run_copa(args: Sequence[str], scratch: Path, env: Mapping[str, str] | None = None) -> Run:
    """`python -m copa ARGS` with TMPDIR, the cache and the working directory inside `scratch`, the resource
    limits above and a wall-time limit. Its peak RSS is its own VmHWM, sampled as tests/support/hostile_cli.py
    does: getrusage(RUSAGE_CHILDREN) would be the largest of every child this process ever waited for, and even
    wait4's ru_maxrss carries the forking pytest process's mark over fork and exec."""
    tmp = scratch / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    full_env = {**os.environ, "TMPDIR": str(tmp), "COPA_CACHE_DIR": str(scratch / "cache"), "COPA_DEBUG": "",
                "COPA_PROGRESS": "", **(env or {})}
    full_env["PYTHONPATH"] = str(ROOT)
    out, err = scratch / "stdout", scratch / "stderr"
    start = time.monotonic()
    with out.open("wb") as o, err.open("wb") as e:
        proc = subprocess.Popen([sys.executable, "-m", "copa", *args, "--progress", "plain"], cwd=scratch,
                                stdout=o, stderr=e, stdin=subprocess.DEVNULL, env=full_env, preexec_fn=_limits)
    killed = threading.Event()
    peak = [0]
    done = threading.Event()
    sampler = threading.Thread(target=_sample_peak, args=(proc.pid, peak, done), daemon=True)
    sampler.start()

    def kill() -> None:
        killed.set()
        os.killpg(proc.pid, signal.SIGKILL)

    timer = threading.Timer(CASE_SECONDS, kill)
    timer.start()
    try:
        _, status = os.waitpid(proc.pid, 0)
    finally:
        timer.cancel()
        done.set()
        sampler.join()
    proc.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.monotonic() - start
    return Run(proc.returncode, out.read_text(errors="replace"), err.read_text(errors="replace"), seconds,
               peak[0], killed.is_set())


def leftovers(scratch: Path) -> list[str]:
    """What a run left in its TMPDIR (copa's work directories must all be gone)."""
    return sorted(str(p.relative_to(scratch)) for p in (scratch / "tmp").rglob("*"))


def nothing_published(out: Path) -> list[str]:
    """Problems if anything was published under `out`: a layout's index.json or blobs, an output tar."""
    problems = []
    if (out / "index.json").exists():
        problems.append("index.json written")
    blobs = out / "blobs"
    if blobs.exists() and any(p.is_file() for p in blobs.rglob("*")):
        problems.append("blobs written")
    return problems


def unchanged(before: Mapping[str, tuple[int, int]], root: Path) -> list[str]:
    """Paths under `root` created or changed since `before` (snapshot_tree)."""
    now = snapshot_tree(root)
    return sorted(p for p in now if before.get(p) != now[p])


def snapshot_tree(root: Path) -> dict[str, tuple[int, int]]:
    out: dict[str, tuple[int, int]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            try:
                st = p.lstat()
            except OSError:
                continue
            out[str(p.relative_to(root))] = (st.st_size, st.st_mtime_ns)
    return out


def checksum(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def u32(value: int) -> bytes:
    return struct.pack(">I", value)


# --------------------------------------------------------------------------------------------------- .apk


def apk_bytes(sign: Callable[[bytes], bytes], key_name: str, pkginfo: Mapping[str, str], data_gz: bytes, *,
              datahash: str | None = None, control_extra: bytes = b"") -> tuple[bytes, bytes]:
    """A v2 .apk as abuild lays it out (see tests/support/apkrepo.py): gzip(signature tar, cut) + gzip(control
    tar, cut) + `data_gz` verbatim. `datahash` defaults to the sha256 of `data_gz` (another value is a lie).
    Returns (package bytes, the control member's gzip bytes, whose sha1 is the index's C:)."""
    lines = [f"{k} = {v}" for k, v in pkginfo.items()]
    lines.append(f"datahash = {datahash if datahash is not None else hashlib.sha256(data_gz).hexdigest()}")
    control = gzip.compress(tar_bytes([Member(".PKGINFO", data=("\n".join(lines) + "\n").encode())], end=False,
                                      fmt=tarfile.USTAR_FORMAT) + control_extra, compresslevel=9, mtime=0)
    signature = gzip.compress(tar_bytes([Member(f".SIGN.RSA256.{key_name}", data=sign(control))], end=False,
                                        fmt=tarfile.USTAR_FORMAT), compresslevel=9, mtime=0)
    return signature + control + data_gz, control


def apk_identity(control_gz: bytes) -> str:
    import base64

    return "Q1" + base64.b64encode(hashlib.sha1(control_gz).digest()).decode()


def apk_record(fields: Mapping[str, str]) -> str:
    return "".join(f"{k}:{v}\n" for k, v in fields.items())


# --------------------------------------------------------------------------------------------------- .rpm
# Written from rpm's file format (lib/header.c, lib/package.c, rpmio/cpio): a lead, a signature header with
# SHA256HEADER and SIZE, a main header with its HEADERIMMUTABLE region, a gzip cpio payload with PAYLOADDIGEST.
# The real `rpm -qlp` reads a package made from honest inputs (tests check it), so every case differs from a valid
# package only by its attack.

_NULL, _CHAR, _INT8, _INT16, _INT32, _INT64, _STRING, _BIN, _STRING_ARRAY, _I18N = range(10)
_ALIGN = {_INT16: 2, _INT32: 4, _INT64: 8}


@dataclass(frozen=True)
class RFile:
    """One file of a crafted rpm: `mode` includes the type bits; `size` overrides the header's size (a lie);
    `inode` shares content (hard links); `cpio_name` overrides the payload's name for it."""

    path: str
    data: bytes = b""
    mode: int = 0o100644
    link: str = ""
    inode: int = 0
    size: int | None = None
    cpio_name: bytes | None = None
    in_payload: bool = True


def _header(entries: Sequence[tuple[int, int, int, bytes]], region: int) -> bytes:
    """A header with magic: `entries` (tag, type, count, raw data), sorted by tag, inside one `region`."""
    index: list[bytes] = []
    data = bytearray()
    n = len(entries) + 1
    for tag, type_, count, raw in sorted(entries):
        align = _ALIGN.get(type_, 1)
        data += b"\0" * (-len(data) % align)
        index.append(struct.pack(">iIiI", tag, type_, len(data), count))
        data += raw
    trailer_at = len(data)
    data += struct.pack(">iIiI", region, _BIN, -n * 16, 16)
    index.insert(0, struct.pack(">iIiI", region, _BIN, trailer_at, 16))
    return b"\x8e\xad\xe8\x01\0\0\0\0" + struct.pack(">II", n, len(data)) + b"".join(index) + bytes(data)


def _s(tag: int, text: str, type_: int = _STRING) -> tuple[int, int, int, bytes]:
    return (tag, type_, 1, text.encode("utf-8", "surrogateescape") + b"\0")


def _sa(tag: int, texts: Sequence[str]) -> tuple[int, int, int, bytes]:
    return (tag, _STRING_ARRAY, len(texts), b"".join(t.encode("utf-8", "surrogateescape") + b"\0" for t in texts))


def _i32(tag: int, values: Sequence[int]) -> tuple[int, int, int, bytes]:
    return (tag, _INT32, len(values), struct.pack(f">{len(values)}I", *values))


def _i16(tag: int, values: Sequence[int]) -> tuple[int, int, int, bytes]:
    return (tag, _INT16, len(values), struct.pack(f">{len(values)}H", *values))


def _i64(tag: int, values: Sequence[int]) -> tuple[int, int, int, bytes]:
    return (tag, _INT64, len(values), struct.pack(f">{len(values)}Q", *values))


def cpio_entry(name: bytes, mode: int, data: bytes, ino: int, nlink: int = 1, size: int | None = None) -> bytes:
    fields = [ino, mode, 0, 0, nlink, MTIME, len(data) if size is None else size, 0, 0, 0, 0, len(name) + 1, 0]
    head = b"070701" + b"".join(b"%08x" % v for v in fields) + name + b"\0"
    head += b"\0" * (-len(head) % 4)
    return head + data + b"\0" * (-len(data) % 4)


def cpio_archive(files: Sequence[RFile]) -> bytes:
    out = bytearray()
    last_of_inode = {f.inode: i for i, f in enumerate(files) if f.inode}
    for i, f in enumerate(files):
        if not f.in_payload:
            continue
        data = f.data if (f.mode & 0o170000) == 0o100000 else f.link.encode() if f.link else b""
        if f.inode and last_of_inode[f.inode] != i:
            data = b""  # rpm puts a hard link group's content on its last member only
        name = f.cpio_name if f.cpio_name is not None else b"." + f.path.encode("utf-8", "surrogateescape")
        out += cpio_entry(name, f.mode, data, f.inode or i + 1, sum(1 for g in files if f.inode and g.inode == f.inode)
                          or 1)
    trailer = cpio_entry(b"TRAILER!!!", 0, b"", 0)
    return bytes(out + trailer)


def rpm_bytes(name: str, version: str, release: str, files: Sequence[RFile], *, arch: str = "noarch",
              payload: bytes | None = None, compressed: bytes | None = None,
              header_extra: Sequence[tuple[int, int, int, bytes]] = (), payload_digest: str | None = None,
              sizes_64: bool = False) -> bytes:
    """A binary rpm holding `files` (header and cpio agree unless a RFile lies). `payload` replaces the cpio,
    `compressed` the gzip payload; `payload_digest` replaces the PAYLOADDIGEST the header would carry."""
    cpio = payload if payload is not None else cpio_archive(files)
    body = compressed if compressed is not None else gzip.compress(cpio, mtime=0)
    dirs: list[str] = []
    dir_index, base = [], []
    for f in files:
        d, _, b = f.path.rpartition("/")
        d += "/"
        if d not in dirs:
            dirs.append(d)
        dir_index.append(dirs.index(d))
        base.append(b)
    sizes = [f.size if f.size is not None else len(f.link.encode()) if f.link else len(f.data) for f in files]
    digests = [hashlib.sha256(f.data).hexdigest() if (f.mode & 0o170000) == 0o100000 else "" for f in files]
    nevr = f"{version}-{release}"
    entries = [
        (100, _STRING_ARRAY, 1, b"C\0"),  # HEADERI18NTABLE
        _s(1000, name), _s(1001, version), _s(1002, release), _s(1004, "hostile test package", _I18N),
        _s(1005, "hostile test package built by tests/support/hostile_pkgs.py", _I18N), _i32(1006, [MTIME]),
        _s(1007, "copa-test"), _i32(1009, [sum(sizes) & 0xFFFFFFFF]), _s(1014, "MIT"), _s(1016, "Unspecified", _I18N),
        _s(1021, "linux"), _s(1022, arch), _s(1044, f"{name}-{nevr}.src.rpm"),
        _sa(1047, [name]), _i32(1112, [8]), _sa(1113, [nevr]), _s(1064, "4.18.0"),
        _s(1124, "cpio"), _s(1125, "gzip"), _s(1126, "9"), _i32(5011, [8]),
        _sa(5092, [payload_digest or hashlib.sha256(body).hexdigest()]), _i32(5093, [8]),
    ]
    if files:
        entries += [
            _i64(5008, sizes) if sizes_64 else _i32(1028, sizes), _i16(1030, [f.mode for f in files]),
            _i16(1033, [0] * len(files)), _i32(1034, [MTIME] * len(files)), _sa(1035, digests),
            _sa(1036, [f.link for f in files]), _i32(1037, [0] * len(files)), _sa(1039, ["root"] * len(files)),
            _sa(1040, ["root"] * len(files)), _i32(1095, [1] * len(files)),
            _i32(1096, [f.inode or 1000 + i for i, f in enumerate(files)]), _sa(1097, [""] * len(files)),
            _i32(1116, dir_index), _sa(1117, base), _sa(1118, dirs),
        ]
    header = _header([*entries, *header_extra], 63)
    signature = _header([_s(273, hashlib.sha256(header).hexdigest()), _i32(1000, [len(header) + len(body)])], 62)
    signature += b"\0" * (-len(signature) % 8)
    lead = bytearray(96)
    lead[0:4] = b"\xed\xab\xee\xdb"
    lead[4], lead[5] = 3, 0
    lead[6:8] = struct.pack(">H", 0)
    lead[8:10] = struct.pack(">H", 1)
    label = f"{name}-{nevr}".encode()[:65]
    lead[10:10 + len(label)] = label
    lead[76:78] = struct.pack(">H", 1)
    lead[78:80] = struct.pack(">H", 5)
    return bytes(lead) + signature + header + body


def swap_package(repo: Path, filename: str, data: bytes) -> None:
    """Replace repo/filename with `data` and make primary.xml (and repomd.xml) name its checksum and size, as a
    mirror holding the signing key would: the index vouches for the hostile bytes."""
    old = (repo / filename).read_bytes()
    (repo / filename).write_bytes(data)
    repodata = repo / "repodata"
    repomd = (repodata / "repomd.xml").read_text()
    primary = next(p for p in repodata.iterdir() if p.name.endswith("primary.xml.gz"))
    raw = primary.read_bytes()
    text = gzip.decompress(raw).decode()
    text = text.replace(hashlib.sha256(old).hexdigest(), hashlib.sha256(data).hexdigest())
    text = text.replace(f'package="{len(old)}"', f'package="{len(data)}"')
    new_raw = gzip.compress(text.encode(), mtime=0)
    primary.write_bytes(new_raw)
    for before, after in ((hashlib.sha256(raw).hexdigest(), hashlib.sha256(new_raw).hexdigest()),
                          (hashlib.sha256(gzip.decompress(raw)).hexdigest(), hashlib.sha256(text.encode()).hexdigest()),
                          (f"<size>{len(raw)}</size>", f"<size>{len(new_raw)}</size>"),
                          (f"<open-size>{len(gzip.decompress(raw))}</open-size>",
                           f"<open-size>{len(text.encode())}</open-size>")):
        repomd = repomd.replace(before, after, 1)
    (repodata / "repomd.xml").write_text(repomd)
