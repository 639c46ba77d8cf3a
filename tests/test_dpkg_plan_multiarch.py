"""The resolver's Multi-Arch: same twins on another architecture and what they need there (pure, no repository):
each twin's Depends are met on its own architecture, by a Multi-Arch: foreign package of any architecture, or by
an `:any` relation on a Multi-Arch: allowed one; what is missing there is installed or upgraded for that
architecture, or the reported package fails as a whole."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from copa.pkg.dpkg.plan import Installed, Resolution, resolve
from copa.pkg.dpkg.version import compare_versions
from tests.test_dpkg_plan import Rec, W

NATIVE = Installed("libfoo", "amd64", "1.0", False, "foo", multi_arch="same")
TWIN = Installed("libfoo", "i386", "1.0", False, "foo", multi_arch="same")


def _run(installed: Sequence[Installed], native: Sequence[Rec], i386: Sequence[Rec],
         foreign: Mapping[str, tuple[Installed, ...]] | None = None) -> Resolution:
    def by_name(recs: Sequence[Rec], name: str) -> list[Rec]:
        return [r for r in recs if r.package == name]

    return resolve({i.name: i for i in installed}, [W("libfoo", "1.1")], lambda n: by_name(native, n), "amd64",
                   compare_versions, foreign={"libfoo": (TWIN,), **(foreign or {})},
                   foreign_versions_of=lambda n, arch: by_name(i386, n) if arch == "i386" else [])


def _chosen(res: Resolution) -> set[tuple[str, str, str, str]]:
    return {(c.record.package, c.record.architecture, c.record.version, c.kind.value) for c in res.chosen}


def _foo(arch: str, depends: str) -> Rec:
    return Rec("libfoo", "1.1", depends=depends, source_name="foo", architecture=arch, multi_arch="same")


def test_twin_gets_its_own_architectures_new_dependency() -> None:
    deps = "libbar, tool (>= 1.1), helper:any"
    native = [_foo("amd64", deps), Rec("libbar", "1.0", multi_arch="same"), Rec("tool", "1.1", multi_arch="foreign"),
              Rec("helper", "1.0", multi_arch="allowed")]
    i386 = [_foo("i386", deps), Rec("libbar", "1.0", architecture="i386", multi_arch="same")]
    installed = [NATIVE, Installed("tool", "amd64", "1.0", False, "tool", multi_arch="foreign"),
                 Installed("helper", "amd64", "1.0", False, "helper", multi_arch="allowed")]
    res = _run(installed, native, i386)
    assert not res.failures, res.failures
    assert {(p, a, v) for p, a, v, _k in _chosen(res)} == {
        ("libfoo", "amd64", "1.1"), ("libfoo", "i386", "1.1"), ("libbar", "amd64", "1.0"), ("libbar", "i386", "1.0"),
        ("tool", "amd64", "1.1")}
    assert ("libbar", "i386", "1.0", "new") in _chosen(res)


def test_twin_upgrades_an_installed_foreign_dependency() -> None:
    """libdep is installed only for i386 too (Multi-Arch: same), and only the twin's new version needs it newer."""
    native = [_foo("amd64", "libdep (>= 1.1)"), Rec("libdep", "1.1", multi_arch="same")]
    i386 = [_foo("i386", "libdep (>= 1.1)"), Rec("libdep", "1.1", architecture="i386", multi_arch="same")]
    dep = Installed("libdep", "amd64", "1.0", False, "libdep", multi_arch="same")
    dep32 = Installed("libdep", "i386", "1.0", False, "libdep", multi_arch="same")
    res = _run([NATIVE, dep], native, i386, {"libdep": (dep32,)})
    assert {(p, a, v) for p, a, v, _k in _chosen(res)} == {
        ("libfoo", "amd64", "1.1"), ("libfoo", "i386", "1.1"), ("libdep", "amd64", "1.1"), ("libdep", "i386", "1.1")}
    assert next(c for c in res.chosen if c.record.package == "libdep" and c.record.architecture == "i386"
                ).installed == dep32


def test_twin_dependency_missing_for_its_architecture_fails_as_a_whole() -> None:
    native = [_foo("amd64", "libbar"), Rec("libbar", "1.0", multi_arch="same")]
    res = _run([NATIVE], native, [_foo("i386", "libbar")])
    assert not res.chosen
    assert res.failures[0].name == "libfoo" and "libbar" in res.failures[0].detail and "i386" in res.failures[0].detail


def test_twin_dependency_that_would_replace_the_native_package_fails() -> None:
    """tool is Multi-Arch: no and installed for amd64: tool:i386 would replace it (dpkg allows one of them)."""
    native = [_foo("amd64", "tool"), Rec("tool", "1.0")]
    i386 = [_foo("i386", "tool"), Rec("tool", "1.0", architecture="i386")]
    res = _run([NATIVE, Installed("tool", "amd64", "1.0", False, "tool")], native, i386)
    assert not res.chosen and "replace tool:amd64" in res.failures[0].detail
