"""The platform a report was made for, in OCI terms, so it can be matched against an image index.

Scanners copy the image config's `architecture`/`variant` (OCI names), but plugins and older tools write what the
kernel or the package manager calls the architecture (`x86_64`, `aarch64`, `armhf`), and some name the variant
inside the architecture (`arm/v7`). The names are mapped as containerd's `platforms.Normalize` maps them; arm64's
variant `v8` is dropped, as Copacetic drops it, because images and scanners disagree on writing it and an empty
variant matches any (copa.oci.model.Platform.matches).
"""

from __future__ import annotations

from copa.oci.model import Platform

# architecture spelling -> (OCI architecture, variant implied by the spelling or "")
_ARCHITECTURES: dict[str, tuple[str, str]] = {
    "amd64": ("amd64", ""), "x86_64": ("amd64", ""), "x86-64": ("amd64", ""), "x64": ("amd64", ""),
    "386": ("386", ""), "i386": ("386", ""), "i486": ("386", ""), "i586": ("386", ""), "i686": ("386", ""),
    "x86": ("386", ""),
    "arm64": ("arm64", ""), "aarch64": ("arm64", ""), "armv8": ("arm64", ""), "armv8l": ("arm64", ""),
    "arm": ("arm", ""), "armhf": ("arm", "v7"), "armv7": ("arm", "v7"), "armv7l": ("arm", "v7"),
    "armv7hl": ("arm", "v7"), "armel": ("arm", "v6"), "armv6": ("arm", "v6"), "armv6l": ("arm", "v6"),
    "armv5": ("arm", "v5"), "armv5l": ("arm", "v5"), "armv5tel": ("arm", "v5"),
    "ppc64le": ("ppc64le", ""), "ppc64el": ("ppc64le", ""), "powerpc64le": ("ppc64le", ""),
    "s390x": ("s390x", ""), "riscv64": ("riscv64", ""), "mips64le": ("mips64le", ""), "mips64el": ("mips64le", ""),
    "loong64": ("loong64", ""), "loongarch64": ("loong64", ""),
}


def _variant(text: str) -> str:
    """'8' and 'V8' -> 'v8'; OCI variants are lower case with a leading v for the numbered ones."""
    v = text.strip().lower()
    return f"v{v}" if v.isdigit() else v


def normalise_platform(architecture: str | None, variant: str | None = None, os: str | None = None) -> Platform | None:
    """The OCI platform a report names, or None when it names no architecture.

    `architecture` may carry the variant (`arm/v7`) or even the OS (`linux/arm64`); an explicit `variant` wins over
    one the spelling implies (`armhf` is arm/v7 unless the report says otherwise)."""
    if not architecture or not architecture.strip():
        return None
    parts = [p.strip() for p in architecture.strip().split("/")]
    os_name = (os or "").strip().lower() or "linux"
    if len(parts) == 3:
        os_name, arch_text, inline_variant = parts[0].lower() or os_name, parts[1], parts[2]
    elif len(parts) == 2:
        arch_text, inline_variant = parts
    else:
        arch_text, inline_variant = parts[0], ""
    arch, implied = _ARCHITECTURES.get(arch_text.lower(), (arch_text.lower(), ""))
    chosen = _variant(variant or "") or _variant(inline_variant) or implied
    if arch == "arm64" and chosen == "v8":
        chosen = ""
    if arch == "amd64" and chosen == "v1":
        chosen = ""  # the baseline x86-64 level, which containerd also writes as no variant
    return Platform(os_name, arch, chosen)
