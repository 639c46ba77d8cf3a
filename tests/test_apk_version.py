"""apk version order: pairs as apk-tools' own version tests and Alpine's real package versions order them."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from copa.pkg.apk.version import compare_versions, is_valid, satisfies
from copa.report.model import comparator_for

# (a, expected, b): orderings apk-tools defines (leading-zero fields compare as strings, pre-release
# suffixes before the release, post-release after, -rN last, ~hash after the suffixes).
TABLE = """
2.34 > 0.1.0_alpha
23_foo > 4_beta
1.0 < 1.0bc
0.1.0_alpha2 > 0.1.0_alpha
1.1 > 1.1_alpha1
1.0.4-r3 < 1.0.4-r4
1.06-r6 < 006
006 > 1.0.0
2.01.01_alpha10 > 0.94
3.0.0-r2 < 021109-r3
0.9.28.1 < 087-r1
2.12r-r4 < 2.12r-r5
1.2.07.8 < 1.2.12.04
1.6d > 1.2.07.8
02.08.01b < 4.77
0.20070118 < 0.20070207_rc1
0.59s-r11 < 0.65
1.0.0_pre20191002222144-r0 < 1.0.0_pre20210530193627-r0
1.0 > 0.99.3.20040818
1.02 < 1.03-r1
1.3_pre1-r1 < 1.3.2
4.5_p1-r1 > 4.5_p1
2.9.11_pre20051101-r3 > 2.9.11_pre20051101
1.0_p10-r0 > 1.0_p9-r0
0.1.0_alpha_pre2 < 0.1.0_alpha
2.5.1-r8 < 2.5.1a-r1
6.0_pre1 < 6.0
6.0_p1 > 6.0
1.0_rc1 < 1.0
1.0_cvs1 > 1.0
1.0_git20240101 > 1.0_svn5
1.0_hg1 > 1.0_git1
1.0_p1 > 1.0_hg1
1.0~abc123 > 1.0
1.0~abc123-r1 > 1.0~abc123
1.0~abc123 < 1.0~abd
3.3.2-r5 < 3.3.3-r0
3.5.4-r0 > 3.5.1-r0
1.37.0-r30 > 1.37.0-r9
8.14.1-r1 < 8.14.1-r10
1.2.5-r10 > 1.2.5-r9
2.4.32 = 2.4.32
1.0.0 > 1.0
"""


def _rows() -> list[tuple[str, str, str]]:
    return [tuple(line.split()) for line in TABLE.strip().splitlines()]  # type: ignore[misc]


@pytest.mark.parametrize(("a", "op", "b"), _rows())
def test_order(a: str, op: str, b: str) -> None:
    want = {"<": -1, "=": 0, ">": 1}[op]
    assert compare_versions(a, b) == want
    assert compare_versions(b, a) == -want


def test_registered_for_report_families() -> None:
    import copa.pkg.apk.adapter  # noqa: F401  (registers the comparator)

    for family in ("alpine", "wolfi", "chainguard"):
        assert comparator_for(family)("1.0_rc1", "1.0") < 0


@pytest.mark.parametrize("v", ["1.0", "1.2.3-r0", "1.0_alpha2_p3-r1", "1.0~abc-r2", "2.12r-r4", "20240101"])
def test_valid(v: str) -> None:
    assert is_valid(v)


@pytest.mark.parametrize("v", ["", "a1", "1.0-1", "1.0_foo", "1.0-r", "1.0~", "1.0-r1-r2", "1..0"])
def test_invalid(v: str) -> None:
    assert not is_valid(v)


@pytest.mark.parametrize(("version", "op", "wanted", "ok"), [
    ("1.2.3-r0", ">=", "1.2.3", True),
    ("1.2.3-r0", "<", "1.2.3", False),
    ("1.2.3-r1", "=", "1.2.3-r1", True),
    ("1.2.3-r1", "=", "1.2.3-r0", False),
    ("1.2.3-r1", "~", "1.2", True),
    ("1.3.0-r0", "~", "1.2", False),
    ("1.2.10", "~", "1.2.1", False),
    ("3.0.1", ">", "3.0.1", False),
    ("3.0.1", "<=", "3.0.1", True),
])
def test_satisfies(version: str, op: str, wanted: str, ok: bool) -> None:
    assert satisfies(version, op, wanted) is ok


_part = st.from_regex(r"[0-9]{1,3}(\.[0-9]{1,3}){0,3}[a-c]?(_(alpha|beta|pre|rc|p|git)[0-9]{0,2})?(-r[0-9]{1,2})?",
                      fullmatch=True)


@given(_part, _part, _part)
def test_total_order(a: str, b: str, c: str) -> None:
    assert compare_versions(a, a) == 0
    assert compare_versions(a, b) == -compare_versions(b, a)
    if compare_versions(a, b) <= 0 and compare_versions(b, c) <= 0:
        assert compare_versions(a, c) <= 0


def test_table_against_real_apk() -> None:
    from tests.support.alpine import apk_version_compare, apk_version_valid

    versions = {v for a, _, b in _rows() for v in (a, b)} | {"", "a1", "1.0-1", "1.0_foo", "1.0~", "1..0"}
    assert {v: is_valid(v) for v in versions} == {v: apk_version_valid(v) for v in versions}
    # apk 3 refuses to order invalid versions (2.x ordered them anyway): compare the valid ones.
    valid = [(a, b) for a, _, b in _rows() if is_valid(a) and is_valid(b)]
    assert len(valid) > 35
    assert [(a, b, compare_versions(a, b)) for a, b in valid] == [(a, b, apk_version_compare(a, b)) for a, b in valid]


@settings(max_examples=60, deadline=None)
@given(_part, _part)
def test_random_pairs_against_real_apk(a: str, b: str) -> None:
    from tests.support.alpine import apk_version_compare

    assert compare_versions(a, b) == apk_version_compare(a, b)
