"""File capabilities: the FILECAPS text of an rpm header ("cap_net_raw=ep") turned into the `security.capability`
extended attribute rpm sets with libcap's cap_from_text + cap_set_file, so the layer carries it as a PAX record
`SCHILY.xattr.security.capability` (what container runtimes turn back into the xattr).

The value is `struct vfs_cap_data` revision 2 (linux/capability.h), little-endian: magic_etc (0x02000000, plus
VFS_CAP_FLAGS_EFFECTIVE 0x1 when any capability is effective), then permitted and inheritable for capabilities
0-31, then for 32-63. The text is parsed as libcap 2.66's cap_from_text does: whitespace-separated clauses
`[caps]OP flags[OP flags...]`, caps a comma list of names (cap_xxx, case-insensitive), numbers or `all` (an empty list
before `=` means all too), OP `=` (clear, then set), `+`, `-`, and `=+`/`=-`, flags from `eip`. "All" is every
capability up to CAP_LAST_CAP 40 (cap_checkpoint_restore, Linux 5.9+): libcap uses the running kernel's, rpm the
container host's; copa cannot know that host and takes the current one. As libcap refuses to write, a set whose
effective bits are some but not all of permitted|inheritable is refused (None)."""

from __future__ import annotations

import struct

XATTR = "security.capability"
PAX_KEY = "SCHILY.xattr." + XATTR
VFS_CAP_REVISION_2 = 0x02000000
VFS_CAP_FLAGS_EFFECTIVE = 0x000001
CAP_LAST_CAP = 40
NAMES = ("chown", "dac_override", "dac_read_search", "fowner", "fsetid", "kill", "setgid", "setuid", "setpcap",
         "linux_immutable", "net_bind_service", "net_broadcast", "net_admin", "net_raw", "ipc_lock", "ipc_owner",
         "sys_module", "sys_rawio", "sys_chroot", "sys_ptrace", "sys_pacct", "sys_admin", "sys_boot", "sys_nice",
         "sys_resource", "sys_time", "sys_tty_config", "mknod", "lease", "audit_write", "audit_control", "setfcap",
         "mac_override", "mac_admin", "syslog", "wake_alarm", "block_suspend", "audit_read", "perfmon", "bpf",
         "checkpoint_restore")
_BY_NAME = {f"cap_{n}": i for i, n in enumerate(NAMES)}
_ALL = (1 << (CAP_LAST_CAP + 1)) - 1


class CapsError(ValueError):
    pass


def _caps_list(text: str, pos: int) -> tuple[int, int]:
    """A comma-separated capability list starting at `pos`: (bit mask, position after it)."""
    mask = 0
    while True:
        end = pos
        while end < len(text) and (text[end].isalnum() or text[end] == "_"):
            end += 1
        word = text[pos:end].lower()
        if word == "all":
            mask |= _ALL
        elif word.isdigit() and int(word) <= CAP_LAST_CAP:
            mask |= 1 << int(word)
        elif word in _BY_NAME:
            mask |= 1 << _BY_NAME[word]
        else:
            raise CapsError(f"unknown capability {word!r}")
        pos = end
        if pos >= len(text) or text[pos] != ",":
            return mask, pos
        pos += 1
        if pos >= len(text) or not (text[pos].isalnum() or text[pos] == "_"):
            raise CapsError("a capability list ends in ','")


def parse(text: str) -> tuple[int, int, int]:
    """(effective, permitted, inheritable) masks of a capability text, as cap_from_text computes them."""
    sets = {"e": 0, "p": 0, "i": 0}
    pos = 0
    while True:
        while pos < len(text) and text[pos].isspace():
            pos += 1
        if pos >= len(text):
            return sets["e"], sets["p"], sets["i"]
        listed = False
        if text[pos].isalnum() or text[pos] == "_":
            mask, pos = _caps_list(text, pos)
            listed = True
        elif text[pos] in "+-":
            raise CapsError("'+' and '-' need a list of capabilities")
        else:
            mask = _ALL
        if pos >= len(text):
            raise CapsError("a clause without an operator")
        op = text[pos]
        pos += 1
        if op == "=" and pos < len(text) and text[pos] in "+-":
            if not listed:
                raise CapsError("'=+' and '=-' need a list of capabilities")
            op = "P" if text[pos] == "+" else "M"
            pos += 1
        elif op not in "+-=":
            raise CapsError(f"unknown operator {op!r}")
        while True:
            flags = ""
            while pos < len(text) and not text[pos].isspace() and text[pos] not in "+-":
                if text[pos] not in "eip":
                    raise CapsError(f"unknown flag {text[pos]!r}")
                flags += text[pos]
                pos += 1
            if not flags and op != "=":
                raise CapsError("only '=' may stand without flags")
            if op in "=PM":
                for k in sets:
                    sets[k] &= ~mask
            if op in "=P+":
                for k in flags:
                    sets[k] |= mask
            elif op in "M-":
                for k in flags:
                    sets[k] &= ~mask
            if pos < len(text) and text[pos] in "+-":
                if not listed:
                    raise CapsError("'+' and '-' need a list of capabilities")
                op = text[pos]
                pos += 1
                continue
            break


def vfs_cap_data(text: str) -> bytes | None:
    """The security.capability value for a capability text; None for no capabilities (rpm sets nothing when the
    text is empty) or a set libcap refuses to write."""
    if not text.strip():
        return None
    effective, permitted, inheritable = parse(text)
    if effective and ~effective & (permitted | inheritable):
        return None  # _fcaps_save: EINVAL
    magic = VFS_CAP_REVISION_2 | (VFS_CAP_FLAGS_EFFECTIVE if effective else 0)
    return struct.pack("<5I", magic, permitted & 0xFFFFFFFF, inheritable & 0xFFFFFFFF, permitted >> 32,
                       inheritable >> 32)


def pax_value(raw: bytes) -> str:
    """The value as copa.oci.layer.Entry.pax holds it: Python's tarfile writes surrogate-escaped bytes back as
    they were (with hdrcharset=BINARY when they are not UTF-8)."""
    return raw.decode("utf-8", "surrogateescape")
