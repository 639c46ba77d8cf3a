"""copa.pkg.apt.packages.IndexText (the Packages index scanned paragraph by paragraph, never parsed whole) against
python-debian's deb822 parser as the oracle: the same paragraphs, names and Provides fields, on generated indexes
with the layouts a repository tool may write; and the Provides pairs kept in the cache read back the same."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from debian.deb822 import Packages

import copa.pkg.apt.packages as packages
from copa.pkg.apt.packages import IndexText
from copa.pkg.cache import Cache


def _index(rng: random.Random, count: int, shuffled: float = 0.1) -> bytes:
    paragraphs = []
    for i in range(count):
        fields = [("Package", f"pkg{i}-{rng.choice(['a', 'lib', 'x.y+z'])}"),
                  ("Version", f"{rng.randint(0, 3)}.{i}-1"), ("Architecture", rng.choice(["amd64", "all"])),
                  ("Filename", f"pool/p/pkg{i}.deb"), ("Size", str(rng.randint(100, 10**6))),
                  ("SHA256", f"{i:064x}"), ("Description", "a package\n more text\n .\n end")]
        if rng.random() < 0.3:
            provides = ", ".join(f"virt{rng.randint(0, 20)}" + rng.choice(["", " (= 1.0)"]) for _ in range(3))
            if rng.random() < 0.3:
                provides = provides.replace(", ", ",\n ", 1)  # a folded field
            fields.append(("Provides", provides))
        if rng.random() < 0.2:
            fields.append(("Depends", "libc6 (>= 2.36), virt3 | pkg1-a"))
        if rng.random() < shuffled:
            rng.shuffle(fields)  # Package need not be the first field
        paragraphs.append("\n".join(f"{k}: {v}" for k, v in fields))
    separator = rng.choice(["\n\n", "\n\n\n", "\n\n\n\n"])
    return (separator.join(paragraphs) + "\n").encode()


def _oracle(data: bytes) -> tuple[list[tuple[str, str]], list[str]]:
    provides, names = [], []
    for para in Packages.iter_paragraphs(data.decode().splitlines(keepends=True), use_apt_pkg=False):
        names.append(para["Package"])
        if para.get("Provides", "").strip():
            provides.append((para["Package"], " ".join(para["Provides"].split())))
    return provides, names


@pytest.mark.parametrize("seed", range(6))
def test_provides_and_rows_match_deb822(seed: int, tmp_path: Path) -> None:
    rng = random.Random(seed)
    data = _index(rng, rng.choice([5, 200, 3000]))
    provides, names = _oracle(data)
    path = tmp_path / "Packages"
    path.write_bytes(data)
    for text in (IndexText("t", data=data), IndexText("t", path=path)):
        assert [(p, " ".join(v.split())) for p, v in text.provides()] == provides
        wanted = set(rng.sample(names, min(len(names), 40)))
        assert [r[0] for r in text.rows(wanted)] == [n for n in names if n in wanted]
        # the set is matched by a faster scan than the paragraph walk of a callable: the same rows, field by field
        assert list(text.rows(wanted)) == list(text.rows(wanted.__contains__))
        assert [r[0] for r in text.rows(wanted.__contains__)] == [n for n in names if n in wanted]
        assert [r[0] for r in text.rows()] == names


def test_provides_kept_in_the_cache(tmp_path: Path) -> None:
    cache = Cache(tmp_path / "cache")
    data = _index(random.Random(7), 500)
    expected, _ = _oracle(data)
    path = cache.write_named("packages-text-" + "ab" * 32, lambda out: out.write(data))
    first = IndexText("t", path=path, cache=cache).provides()
    stored = [p for p in (tmp_path / "cache" / "derived").glob("packages-provides-*") if p.is_file()]
    assert len(stored) == 1
    assert [(p, " ".join(v.split())) for p, v in first] == expected
    assert IndexText("t", path=path, cache=cache).provides() == first
    # A damaged entry fails its sum: it is dropped and the pairs are found again.
    stored[0].write_bytes(b'[["evil","everything"]]')
    assert IndexText("t", path=path, cache=cache).provides() == first


@pytest.mark.parametrize("seed", range(8))
def test_later_look_ups_read_where_the_first_pass_found_the_names(seed: int, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    # The first look-up by names notes where each paragraph starts; the later ones read only those paragraphs,
    # unless a Package line somewhere does not start its paragraph. Oracle: deb822's names, and the rows of the
    # paragraph walk (a callable `want`, which never uses the offsets).
    rng = random.Random(seed)
    shuffled = rng.choice([0.0, 0.0, 0.002])
    data = _index(rng, rng.choice([3, 400, 2500]), shuffled)
    _, names = _oracle(data)
    monkeypatch.setattr(packages, "_BLOCK", rng.choice([300, 4096, 2 << 20]))  # blocks cut mid-index, or not
    path = tmp_path / "Packages"
    path.write_bytes(data)
    for text in (IndexText("t", data=data), IndexText("t", path=path)):
        first = set(rng.sample(names, min(len(names), 5)))
        assert [r[0] for r in text.rows(first)] == [n for n in names if n in first]
        indexed = text._where is not None
        assert indexed == (not any(not line.startswith(b"Package:")
                                   for line in [p.lstrip(b"\n") for p in data.split(b"\n\n")] if line))
        for _ in range(4):
            wanted = set(rng.sample(names, rng.randint(0, len(names)))) | {"not-in-the-index"}
            assert list(text.rows(wanted)) == list(text.rows(wanted.__contains__))
            assert [r[0] for r in text.rows(wanted)] == [n for n in names if n in wanted]
