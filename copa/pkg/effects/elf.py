"""Just enough ELF for ldconfig's view of a shared library: class, machine, type, DT_SONAME and DT_NEEDED."""

from __future__ import annotations

import struct
from dataclasses import dataclass

ET_DYN = 3
EM_386, EM_X86_64, EM_AARCH64, EM_ARM, EM_PPC64, EM_S390, EM_RISCV = 3, 62, 183, 40, 21, 22, 243
_PT_LOAD, _PT_DYNAMIC = 1, 2
_DT_NULL, _DT_NEEDED, _DT_STRTAB, _DT_SONAME = 0, 1, 5, 14


@dataclass(frozen=True, slots=True)
class ElfInfo:
    elf64: bool
    little: bool
    machine: int
    type: int
    soname: str | None
    needed: tuple[str, ...]
    flags: int = 0  # e_flags: on 32-bit ARM, the float ABI ldconfig records (EF_ARM_ABI_FLOAT_HARD/SOFT)


def parse(data: bytes) -> ElfInfo | None:
    """The library facts of an ELF file; None if it is not ELF (a linker script, say) or is malformed."""
    if len(data) < 52 or data[:4] != b"\x7fELF" or data[4] not in (1, 2) or data[5] not in (1, 2):
        return None
    elf64, little = data[4] == 2, data[5] == 1
    e = "<" if little else ">"
    try:
        if elf64:
            e_type, e_machine = struct.unpack_from(e + "HH", data, 16)
            e_phoff = struct.unpack_from(e + "Q", data, 32)[0]
            e_phentsize, e_phnum = struct.unpack_from(e + "HH", data, 54)
            e_flags = struct.unpack_from(e + "I", data, 48)[0]
        else:
            e_type, e_machine = struct.unpack_from(e + "HH", data, 16)
            e_phoff = struct.unpack_from(e + "I", data, 28)[0]
            e_phentsize, e_phnum = struct.unpack_from(e + "HH", data, 42)
            e_flags = struct.unpack_from(e + "I", data, 36)[0]
        loads: list[tuple[int, int, int]] = []  # vaddr, offset, filesz
        dynamic: tuple[int, int] | None = None
        for i in range(e_phnum):
            off = e_phoff + i * e_phentsize
            if elf64:
                p_type, _flags, p_offset, p_vaddr, _paddr, p_filesz = struct.unpack_from(e + "IIQQQQ", data, off)
            else:
                p_type, p_offset, p_vaddr, _paddr, p_filesz = struct.unpack_from(e + "IIIII", data, off)
            if p_type == _PT_LOAD:
                loads.append((p_vaddr, p_offset, p_filesz))
            elif p_type == _PT_DYNAMIC:
                dynamic = (p_offset, p_filesz)
        soname_off: int | None = None
        needed_offs: list[int] = []
        strtab: int | None = None
        if dynamic is not None:
            size = 16 if elf64 else 8
            fmt = e + ("qQ" if elf64 else "iI")
            for pos in range(dynamic[0], dynamic[0] + dynamic[1] - size + 1, size):
                tag, val = struct.unpack_from(fmt, data, pos)
                if tag == _DT_NULL:
                    break
                if tag == _DT_SONAME:
                    soname_off = val
                elif tag == _DT_NEEDED:
                    needed_offs.append(val)
                elif tag == _DT_STRTAB:
                    strtab = val
        base = None
        if strtab is not None:
            for vaddr, offset, filesz in loads:
                if vaddr <= strtab < vaddr + filesz:
                    base = strtab - vaddr + offset
                    break

        def string(off: int) -> str:
            assert base is not None
            end = data.index(b"\0", base + off)
            return data[base + off:end].decode("utf-8", "surrogateescape")

        soname = string(soname_off) if soname_off is not None and base is not None else None
        needed = tuple(string(o) for o in needed_offs) if base is not None else ()
    except (struct.error, ValueError, IndexError):
        return None
    return ElfInfo(elf64, little, e_machine, e_type, soname, needed, e_flags)
