"""Which architecture is an image's native one: what the image's dpkg would print (`dpkg --print-architecture`).

dpkg's native architecture is compiled into dpkg itself, so it is the architecture of the installed dpkg package;
a status database whose Multi-Arch armhf libraries outnumber its arm64 packages is still arm64 (a majority vote,
copa's former rule, said armhf and failed the first test here).
"""

from __future__ import annotations

from copa.oci.rootfs import Files
from copa.pkg.dpkg.database import read_database


def _para(name: str, arch: str, multi_arch: str = "") -> str:
    ma = f"Multi-Arch: {multi_arch}\n" if multi_arch else ""
    return (f"Package: {name}\nStatus: install ok installed\nPriority: optional\nSection: libs\n"
            f"Installed-Size: 1\nMaintainer: T <t@example.test>\nArchitecture: {arch}\n{ma}Version: 1.0\n"
            f"Description: test\n")


def _files(paragraphs: list[str], path: str = "var/lib/dpkg/status") -> Files:
    return Files({path: "\n".join(paragraphs).encode()})


def test_the_dpkg_package_names_the_native_architecture() -> None:
    paras = [_para("dpkg", "arm64"), _para("base-files", "arm64")]
    paras += [_para(f"lib{i}", "armhf", "same") for i in range(5)]
    assert read_database(_files(paras), "arm64", "v8").architecture == "arm64"


def test_without_dpkg_the_platform_wins_over_a_majority() -> None:
    # distroless: no dpkg package; the image's platform is amd64 and amd64 packages are installed
    paras = [_para("base-files", "amd64")] + [_para(f"lib{i}", "i386", "same") for i in range(3)]
    assert read_database(_files(paras), "amd64", "").architecture == "amd64"


def test_without_dpkg_or_platform_packages_the_majority_decides() -> None:
    paras = [_para("a", "armhf"), _para("b", "armhf"), _para("c", "arm64")]
    assert read_database(_files(paras), "amd64", "").architecture == "armhf"


def test_armhf_libraries_get_ldconfigs_hard_float_flag() -> None:
    """ldconfig records a 32-bit ARM library's float ABI (glibc's arm readelflib.c): 0x0903 for hard-float. The
    ELF header's ABI is read by binutils' readelf as the oracle, on real armhf libraries from the archive."""
    import subprocess

    from copa.pkg.effects import elf
    from copa.pkg.effects.libraries import _flags
    from tests.support.multiplatform import foreign_rootfs

    root = foreign_rootfs("armhf")
    libs = sorted((root / "usr/lib/arm-linux-gnueabihf").glob("lib*.so.*"))
    assert libs, "the armhf fixture has no libraries"
    for lib in libs[:5]:
        if lib.is_symlink():
            continue
        info = elf.parse(lib.read_bytes())
        assert info is not None
        header = subprocess.run(["readelf", "-h", str(lib)], capture_output=True, text=True, check=True).stdout
        expected = 0x0903 if "hard-float" in header else 0x0B03 if "soft-float" in header else None
        assert expected is not None, header
        assert _flags(info, {}) == expected, (lib.name, hex(_flags(info, {})))
