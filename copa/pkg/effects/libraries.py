"""What `ldconfig` (run by libc-bin's `ldconfig` trigger; on RHEL by a library's %post or glibc's file trigger)
does after libraries change: the soname symlinks it creates, the stale `.so.` links it removes, and the rewritten
/etc/ld.so.cache.

Only glibc images have /etc/ld.so.cache; musl has no cache. The directories are ldconfig's: /etc/ld.so.conf (with
`include` globs) and then the built-in ones (the multiarch pair, /lib and /usr/lib), a directory seen twice through
a symlink counted once under the first name. Rather than re-reading every library of the image, the existing cache
says what each unchanged library's soname is; only libraries the layer writes are read (their ELF headers).
Per directory this follows elf/ldconfig.c search_dir: a file beats a symlink for the same soname, else the higher
_dl_cache_libcmp name wins; a symlink counts as a link only if it is named as the soname or is the `.so` dev link."""

from __future__ import annotations

import fnmatch
import posixpath
from collections.abc import Sequence
from dataclasses import dataclass

from copa.oci.layer import Entry, Kind
from copa.pkg.effects import elf, ldcache
from copa.pkg.effects.merged import Merged
from copa.pkg.effects.model import Package

CACHE = "etc/ld.so.cache"
CONF = "etc/ld.so.conf"
FLAG_ELF, FLAG_ELF_LIBC6 = 0x0001, 0x0003
# sysdeps/.../readelflib.c: the flags ldconfig gives a library by ELF class and machine (FLAG_*_LIB64 | LIBC6).
_MACHINE_FLAGS = {(True, elf.EM_X86_64): 0x0303, (False, elf.EM_X86_64): 0x0803, (True, elf.EM_AARCH64): 0x0A03,
                  (True, elf.EM_PPC64): 0x0503, (True, elf.EM_S390): 0x0403}
_LIBC6_NEEDED = ("libc.so.6", "libm.so.6", "ld-linux.so.2", "ld-linux-x86-64.so.2", "ld-linux-aarch64.so.1")
MULTIARCH = {"amd64": "x86_64-linux-gnu", "arm64": "aarch64-linux-gnu", "i386": "i386-linux-gnu",
             "armhf": "arm-linux-gnueabihf", "armel": "arm-linux-gnueabi", "ppc64el": "powerpc64le-linux-gnu",
             "s390x": "s390x-linux-gnu", "riscv64": "riscv64-linux-gnu", "mips64el": "mips64el-linux-gnuabi64"}


@dataclass(frozen=True, slots=True)
class Result:
    entries: tuple[Entry, ...]
    done: tuple[str, ...]
    notes: tuple[str, ...]


def is_dso(name: str) -> bool:
    """elf/dl-is_dso.h: what ldconfig considers a shared library by its name."""
    return name.startswith(("lib", "ld-")) and ".so" in name and not name.endswith("~")


def _conf_dirs(merged: Merged, path: str, depth: int = 0) -> list[str]:
    """Directories named by ld.so.conf, includes expanded in glob order (sorted, as glob(3) returns them)."""
    data = merged.read(path)
    if data is None or depth > 10:
        return []
    out: list[str] = []
    for raw in data.decode("utf-8", "replace").splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith("include") and line[7:8].isspace():
            for pattern in line[8:].split():
                if not pattern.startswith("/"):
                    pattern = posixpath.join("/" + posixpath.dirname(path), pattern)
                directory, glob = posixpath.split(pattern)
                for name in merged.listdir(directory.lstrip("/")):
                    if fnmatch.fnmatchcase(name, glob):
                        out.extend(_conf_dirs(merged, posixpath.join(directory, name).lstrip("/"), depth + 1))
        elif line.startswith("hwcap") and line[5:6].isspace():
            continue
        else:
            for word in line.replace(",", " ").replace(":", " ").split():
                out.append(word.split("=", 1)[0].rstrip("/") or "/")
    return out


# Red Hat's glibc (slibdir /lib64, libdir /usr/lib64 on 64-bit) adds its system directories through
# add_system_dir, which for a .../lib64 directory adds .../lib, .../lib64 and .../libx32 (x86-64's dl-cache.h).
_RPM_64 = ("amd64", "arm64", "ppc64le", "s390x", "riscv64", "mips64le", "x86_64", "aarch64")


def builtin_dirs(architecture: str, family: str = "dpkg") -> list[str]:
    """ldconfig's built-in directories after those of ld.so.conf: Debian's multiarch pair, then /lib and /usr/lib;
    for the rpm family (RHEL, Fedora, Amazon Linux) /lib, /lib64, /libx32, then the same under /usr."""
    if family == "rpm":
        if architecture in _RPM_64:
            return ["/lib", "/lib64", "/libx32", "/usr/lib", "/usr/lib64", "/usr/libx32"]
        return ["/lib", "/usr/lib"]
    triplet = MULTIARCH.get(architecture)
    return ([f"/lib/{triplet}", f"/usr/lib/{triplet}"] if triplet else []) + ["/lib", "/usr/lib"]


def scan_dirs(merged: Merged, architecture: str, family: str = "dpkg") -> list[tuple[str, str]]:
    """(path as ldconfig names it, real path) of every directory ldconfig scans, in its order."""
    builtin = builtin_dirs(architecture, family)
    out: list[tuple[str, str]] = []
    seen: set[str] = set()
    for d in [*_conf_dirs(merged, CONF), *builtin]:
        try:
            real = merged.resolve(d)
        except Exception:
            continue
        if merged.kind(real) != "dir" or real in seen:
            continue
        seen.add(real)
        out.append((d, real))
    return out


# sysdeps/unix/sysv/linux/arm/readelflib.c: 32-bit ARM libraries carry their float ABI (FLAG_ARM_LIBHF 0x0900,
# FLAG_ARM_LIBSF 0x0b00, each with FLAG_ELF_LIBC6), from the ELF header's EF_ARM_ABI_FLOAT_HARD/SOFT bits.
_EF_ARM_ABI_FLOAT_HARD, _EF_ARM_ABI_FLOAT_SOFT = 0x400, 0x200
_FLAG_ARM_LIBHF, _FLAG_ARM_LIBSF = 0x0903, 0x0B03


def _flags(info: elf.ElfInfo, reference: dict[tuple[bool, int], int]) -> int:
    if not info.elf64 and info.machine == elf.EM_ARM:
        if info.flags & _EF_ARM_ABI_FLOAT_HARD:
            return _FLAG_ARM_LIBHF
        if info.flags & _EF_ARM_ABI_FLOAT_SOFT:
            return _FLAG_ARM_LIBSF
    known = reference.get((info.elf64, info.machine)) or _MACHINE_FLAGS.get((info.elf64, info.machine))
    if known is not None:
        return known
    return FLAG_ELF_LIBC6 if any(n in _LIBC6_NEEDED for n in info.needed) else FLAG_ELF


@dataclass
class _Dlib:
    name: str
    soname: str
    flag: int
    is_link: bool
    osversion: int = 0


def _triggered(merged: Merged, packages: Sequence[Package], dirs: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The scanned directories whose libraries the layer changes."""
    reals = {real: path for path, real in dirs}
    touched: list[tuple[str, str]] = []
    for p in merged.layer_paths():
        parent, name = posixpath.split(p)
        if parent in reals and is_dso(name) and (reals[parent], parent) not in touched:
            touched.append((reals[parent], parent))
    del packages
    return [d for d in dirs if d in touched]


def reproduce(merged: Merged, packages: Sequence[Package], architecture: str, mtime: int | None,
              family: str = "dpkg") -> dict[str, Result]:
    cache_path = merged.resolve(CACHE)
    raw = merged.read(cache_path)
    if raw is None:
        return {}  # not glibc (or no cache ever built): the dynamic loader searches the default paths itself
    dirs = scan_dirs(merged, architecture, family)
    touched = _triggered(merged, packages, dirs)
    if not touched:
        return {}
    who = _responsible(merged, packages, touched)
    try:
        cache = ldcache.parse(raw)
    except (ldcache.CacheError, ValueError, IndexError) as e:
        return {who: Result((), (), (f"ldconfig (/etc/ld.so.cache unreadable: {e})",))}
    if cache.hwcaps:
        return {who: Result((), (), ("ldconfig (the cache has glibc-hwcaps entries copa does not rewrite)",))}
    reference: dict[tuple[bool, int], int] = {}
    entries: list[Entry] = []
    by_dir: dict[str, list[ldcache.CacheEntry]] = {}
    for en in cache.entries:
        by_dir.setdefault(posixpath.dirname(en.value), []).append(en)
    for path, real in touched:
        dlibs, dir_entries = _search_dir(merged, path, real, by_dir.get(path, []), reference)
        entries.extend(dir_entries)
        merged.add(dir_entries)
        by_dir[path] = [ldcache.CacheEntry(d.flag, d.soname, f"{path}/{d.soname}", d.osversion) for d in dlibs]
    order = {path: i for i, (path, _) in enumerate(dirs)}
    flat: list[tuple[int, int, ldcache.CacheEntry]] = []
    for directory, items in by_dir.items():
        for n, en in enumerate(items):
            flat.append((order.get(directory, len(order)), n, en))
    flat.sort(key=lambda t: (t[0], t[1]))
    new_cache = ldcache.Cache(tuple(ldcache.sort_entries([t[2] for t in flat])), cache.generator, cache.little)
    data = ldcache.write(new_cache)
    done = ["ldconfig (soname links and /etc/ld.so.cache)"]
    notes: list[str] = []
    if cache.had_old_format:
        notes.append("ldconfig: the old libc5 part of /etc/ld.so.cache is dropped (new format only)")
    if data != raw:
        entries.append(Entry.file(cache_path, data, 0o644, mtime=mtime))
    return {who: Result(tuple(entries), tuple(done), tuple(notes))}


def _responsible(merged: Merged, packages: Sequence[Package], touched: list[tuple[str, str]]) -> str:
    """The package whose library change (or ldconfig trigger) makes ldconfig run: the first one that asks."""
    for p in packages:
        if any("ldconfig" in t.split() for t in p.triggers):
            return p.name
    return packages[0].name if packages else ""


def _search_dir(merged: Merged, path: str, real: str, old: list[ldcache.CacheEntry],
                reference: dict[tuple[bool, int], int]) -> tuple[list[_Dlib], list[Entry]]:
    """One directory as ldconfig's search_dir sees it after the upgrade: its libraries and the link changes."""
    old_by_key = {en.key: en for en in old}
    # What each unchanged file of the image is, according to the old cache: soname -> the real file it named.
    known: dict[str, ldcache.CacheEntry] = {}
    view = merged.view
    for en in old:
        try:
            target = view.resolve(f"{real}/{en.key}")
        except Exception:
            continue
        if not merged.changed(target):
            known.setdefault(target, en)
    out: list[Entry] = []
    dlibs: list[_Dlib] = []
    for name in merged.listdir(real):
        if not is_dso(name):
            continue
        full = f"{real}/{name}"
        kind = merged.kind(full)
        is_link = kind == "symlink"
        target_kind = merged.target_kind(full)
        if target_kind is None:
            if is_link and ".so." in name:
                out.append(Entry.whiteout(full))  # ldconfig removes stale symlinks
            continue
        if target_kind not in ("file", "hardlink"):
            continue
        target = merged.resolve(full)
        soname: str | None
        osversion = 0
        if merged.changed(target) or target not in known:
            data = merged.read(target) if merged.changed(target) else None
            info = elf.parse(data) if data is not None else None
            if info is None:
                if data is None and name in old_by_key:
                    en = old_by_key[name]
                    soname, flag = en.key, en.flags
                else:
                    continue  # not ELF (a linker script), or an image file no cache entry describes
            else:
                if info.type != elf.ET_DYN:
                    continue
                soname, flag = info.soname or name, _flags(info, reference)
        else:
            en = known[target]
            soname, flag, osversion = en.key, en.flags, en.osversion
        if is_link and name != soname and not (name.endswith(".so") and soname.startswith(name)):
            is_link = False
        if is_link:
            soname = name
        existing = next((d for d in dlibs if d.soname == soname), None)
        if existing is None:
            dlibs.insert(0, _Dlib(name, soname, flag, is_link, osversion))
        elif (not is_link and existing.is_link) or (
                is_link == existing.is_link and ldcache.libcmp(existing.name, name) < 0):
            existing.name, existing.is_link, existing.osversion = name, is_link, osversion
    for d in dlibs:
        if d.is_link or d.name == d.soname:
            continue
        link = f"{real}/{d.soname}"
        try:
            same = merged.target_kind(link) is not None and merged.resolve(link) == merged.resolve(f"{real}/{d.name}")
        except Exception:
            same = False
        if same or merged.kind(link) not in (None, "symlink"):
            continue
        entry = Entry(link, Kind.SYMLINK, 0o777, linkname=d.name)
        out.append(entry)
        merged.add([entry])
    del path
    return dlibs, out
