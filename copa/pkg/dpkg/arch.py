"""dpkg's architecture names for OCI platforms: a module of its own so that importing it costs nothing."""

# Docker/OCI architecture names -> dpkg architecture names, for images whose database names none.
_DEB_ARCH = {
    ("amd64", ""): "amd64",
    ("arm64", ""): "arm64",
    ("arm64", "v8"): "arm64",
    ("arm", "v7"): "armhf",
    ("arm", "v6"): "armel",
    ("arm", "v5"): "armel",
    ("arm", ""): "armhf",
    ("386", ""): "i386",
    ("ppc64le", ""): "ppc64el",
    ("s390x", ""): "s390x",
    ("mips64le", ""): "mips64el",
    ("riscv64", ""): "riscv64",
}


def deb_architecture(oci_arch: str, oci_variant: str) -> str:
    """dpkg's name for an OCI platform's architecture (arm/v7 -> armhf, 386 -> i386)."""
    return _DEB_ARCH.get((oci_arch, oci_variant), oci_arch)
