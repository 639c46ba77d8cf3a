"""Hostile reports (issue 12): wrong types in every field, deep nesting, huge numbers, huge and endless files.

The differential sweep takes real documents (the Trivy reports in ../shared/reports, the Grype and native fixtures)
and replaces each field in turn with each JSON type it does not hold, running parse_report in-process. Whatever the
document, the answer is a Report whose fields are well typed, or one ReportError of one line; never another
exception. The oracle for the well-typed case is the JSON itself: a field copa reads keeps its value's type in the
Report, so a wrongly typed value copa accepted would show up as a non-str in the result.
"""

from __future__ import annotations

import copy
import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from copa.errors import ReportError
from copa.report import Report, load_report, parse_report
from tests.support.hostile_cli import refused, run_copa

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "reports"
FIXTURES = ROOT / "fixtures" / "reports"

# The documents swept: one of each format copa reads by content (the Grype one with a base64 image config).
SWEPT = (
    SHARED / "trivy-alpine-3.21.0.json",
    FIXTURES / "grype" / "grype-debian-12-arm64.json",
    FIXTURES / "v1alpha1-debian.json",
    FIXTURES / "v1alpha2-debian.json",
)
# Each list is swept through its first and last element only: the rest are the same shape, and the sweep stays
# a few hundred cases (about a second in-process).
WRONG: tuple[Any, ...] = (None, True, 0, -1, 1.5, "", "x", [], {}, [None], {"": None}, float("nan"))
# The default run's share of them: one of each JSON type, and the two a parser is likeliest to let through.
WRONG_QUICK: tuple[Any, ...] = (None, True, 1.5, "x", [], {}, [None])
# Bounds the CLI cases are held to (the report is refused before anything else runs).
CLI_SECONDS = 20.0
CLI_PEAK_RSS_BYTES = 200 << 20


def _paths(doc: Any, prefix: tuple[Any, ...] = (), every: bool = False) -> Iterator[tuple[Any, ...]]:
    """Every path to a value in `doc`: dict keys, and the first and last index of each list (every index with
    `every`)."""
    if isinstance(doc, dict):
        for key, value in doc.items():
            yield (*prefix, key)
            yield from _paths(value, (*prefix, key), every)
    elif isinstance(doc, list) and doc:
        for index in range(len(doc)) if every else sorted({0, len(doc) - 1}):
            yield (*prefix, index)
            yield from _paths(doc[index], (*prefix, index), every)


def _replaced(doc: Any, path: tuple[Any, ...], value: Any) -> Any:
    out = copy.deepcopy(doc)
    target = out
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = value
    return out


def _same_kind(a: Any, b: Any) -> bool:
    """Whether `b` is a value of the JSON type `a` already has (then replacing it is no attack)."""
    def kind(v: Any) -> str:
        if isinstance(v, bool) or v is None:
            return repr(v)
        return "number" if isinstance(v, int | float) else type(v).__name__
    return kind(a) == kind(b) and not (isinstance(a, float) and a != a)


def _well_typed(report: Report) -> None:
    """Every field of the Report holds the type its declaration names."""
    assert isinstance(report.os.family, str) and isinstance(report.os.version, str)
    for text in (report.arch, report.variant, report.image_os, report.artifact):
        assert text is None or isinstance(text, str)
    assert all(isinstance(d, str) for d in report.repo_digests)
    for p in (*report.packages, *report.unfixed):
        assert isinstance(p.name, str) and isinstance(p.installed_version, str)
        assert p.fixed_version is None or isinstance(p.fixed_version, str)
        assert all(isinstance(i, str) for i in p.vulnerability_ids)
    # Reading the platform must not fail either (it normalises the architecture text).
    _ = report.platform


def _one_line(e: ReportError) -> str:
    text = str(e)
    assert text and "\n" not in text and "\r" not in text, repr(text)
    return text


def _cases(documents: tuple[Path, ...] = SWEPT, every: bool = False, wrong: tuple[Any, ...] = WRONG_QUICK
           ) -> Iterator[tuple[str, Any]]:
    for path in documents:
        doc = json.loads(path.read_text())
        for where in _paths(doc, every=every):
            original: Any = doc
            for step in where:
                original = original[step]
            for value in wrong:
                if _same_kind(original, value):
                    continue
                name = f"{path.name}:{'.'.join(map(str, where))}={json.dumps(value)}"
                yield name, _replaced(doc, where, value)


def test_wrong_type_in_every_field() -> None:
    """The differential sweep: thousands of documents, each one field off; one line or a well-typed Report."""
    start = time.monotonic()
    count, refused = _sweep(_cases())
    assert count > 300, count  # the sweep really covers the documents
    # Most replacements hit fields copa reads: a sweep refusing nothing would be sweeping the wrong documents.
    assert refused > count // 4, (refused, count)
    assert time.monotonic() - start < 30


@pytest.mark.sweep
def test_wrong_type_in_every_field_of_every_element() -> None:
    """The full sweep: every element of every list, of every report in ../shared/reports and the fixtures (about
    100,000 documents; a few minutes)."""
    documents = (*sorted(SHARED.glob("*.json")), *sorted(FIXTURES.rglob("*.json")))
    count, _ = _sweep(_cases(documents, every=True, wrong=WRONG))
    print(f"wrong-type sweep: {count} documents, no exception but ReportError")


def _sweep(cases: Iterator[tuple[str, Any]]) -> tuple[int, int]:
    """(documents parsed, documents refused); fails on any exception but a one-line ReportError."""
    count = refused = 0
    failures: list[str] = []
    for name, doc in cases:
        count += 1
        data = json.dumps(doc).encode()
        try:
            _well_typed(parse_report(data, name))
        except ReportError as e:
            _one_line(e)
            refused += 1
        except Exception as e:  # the point: any other exception is the bug this sweep looks for
            failures.append(f"{name}: {type(e).__name__}: {e}")
    assert not failures, "\n".join(failures[:20]) + f"\n({len(failures)} of {count})"
    return count, refused


@pytest.mark.parametrize(("name", "data", "words"), [
    ("nested-arrays", b'{"SchemaVersion": 2, "Results": ' + b"[" * 200_000 + b"]" * 200_000 + b"}", ("deeply",)),
    ("nested-objects", b'{"a":' * 100_000 + b"1" + b"}" * 100_000, ("deeply",)),
    ("nested-in-results", b'{"SchemaVersion": 2, "Metadata": {"OS": {"Family": "debian"}}, "Results": [{"Class": '
     b'"os-pkgs", "Vulnerabilities": [' + b"[" * 50_000 + b"]" * 50_000 + b"]}]}", ("deeply",)),
    ("number-of-5000-digits", b'{"SchemaVersion": ' + b"9" * 5000 + b"}", ("digits",)),
    ("float-overflow", b'{"SchemaVersion": 1e999}', ("SchemaVersion",)),
    ("nan-schema", b'{"SchemaVersion": NaN}', ("SchemaVersion",)),
    ("utf16", '{"SchemaVersion": 2}'.encode("utf-16"), ("UTF-8",)),
    ("lone-surrogate", b'{"apiVersion": "v1alpha1", "metadata": {"os": {"type": "\\ud800"}}, "updates": []}', ()),
    ("duplicate-keys", b'{"apiVersion": "v1alpha1", "apiVersion": 7}', ("apiVersion",)),
    ("grype-config-not-base64", json.dumps({"matches": [], "distro": {"name": "debian", "version": "12"},
                                            "source": {"type": "image", "target": {"config": "%%%"}}}).encode(), ()),
    ("grype-config-nested", json.dumps({"matches": [], "distro": {"name": "debian", "version": "12"},
                                        "source": {"type": "image", "target": {"config": __import__("base64")
                                                   .b64encode(b"[" * 100_000).decode()}}}).encode(), ()),
])
def test_hostile_document(name: str, data: bytes, words: tuple[str, ...]) -> None:
    try:
        _well_typed(parse_report(data, name))
    except ReportError as e:
        line = _one_line(e)
        for word in words:
            assert word.lower() in line.lower(), line
    else:
        assert not words, "expected a refusal"


def test_huge_sparse_file_refused_before_reading(tmp_path: Path) -> None:
    """A 1 GB report (sparse: no data written) is refused by its size, so reading it costs no memory."""
    path = tmp_path / "huge.json"
    with path.open("wb") as f:
        f.truncate(1 << 30)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.monotonic()
    with pytest.raises(ReportError, match="too big") as info:
        load_report(path)
    _one_line(info.value)
    assert time.monotonic() - start < 1
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 16 << 10  # KiB: nothing was read


def test_endless_device_refused(tmp_path: Path) -> None:
    """/dev/zero has no size and never ends: refused before it is read (it would fill memory)."""
    with pytest.raises(ReportError, match="not a regular file") as info:
        load_report("/dev/zero")
    _one_line(info.value)


def test_report_from_a_pipe_still_reads(tmp_path: Path) -> None:
    """`-r <(scanner ...)`: a pipe is a fair report source, read to its end (bounded like a file)."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    data = (FIXTURES / "v1alpha2-debian.json").read_bytes()
    writer = subprocess.Popen([sys.executable, "-c", f"open({str(fifo)!r}, 'wb').write({data!r})"])
    try:
        report = load_report(fifo)
    finally:
        writer.wait(10)
    assert report == parse_report(data, str(fifo))


@pytest.mark.parametrize("kind", ["sparse-1GB", "nested", "wrong-type"])
def test_cli_refuses_hostile_report(tmp_path: Path, kind: str) -> None:
    """Through the CLI: exit 3, one line, no traceback, nothing written, within time and memory bounds."""
    work = tmp_path / "work"
    work.mkdir()
    report = work / "report.json"
    if kind == "sparse-1GB":
        with report.open("wb") as f:
            f.truncate(1 << 30)
    elif kind == "nested":
        report.write_bytes(b"[" * 500_000 + b"]" * 500_000)
    else:
        doc = json.loads((SHARED / "trivy-alpine-3.21.0.json").read_text())
        doc["Results"][0]["Vulnerabilities"][0]["PkgName"] = {"name": "musl"}
        report.write_text(json.dumps(doc))
    run = run_copa(["patch", "-i", f"oci:{work / 'no-such'}", "-r", str(report), "--oci-dir", str(work / "out")],
                   work, tmp_path / "logs", kill_after=CLI_SECONDS * 3)
    refused(run, 3, (), seconds=CLI_SECONDS, peak_rss=CLI_PEAK_RSS_BYTES)
    assert sorted(p.name for p in work.iterdir()) == ["report.json"], "nothing may be written"
