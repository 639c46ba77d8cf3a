#!/usr/bin/env python3
"""One coverage-guided fuzz target (atheris, libFuzzer's engine): `target.py NAME [libFuzzer flags] [CORPUS_DIR]`.

NAME is one of tests/test_fuzz_parsers.py's TARGETS (dpkg-status, apt-release, rpm-header, layer-tar, ...); the
property is the same as there: the parser returns a value or raises a CopaError with a one-line message. Anything
else is a crash: libFuzzer stops and writes the input to crash-<sha1> (it belongs in tests/test_fuzz_corpus.py).
copa's modules are instrumented for coverage; the seeds of the property test start the corpus.
"""

from __future__ import annotations

import sys
from pathlib import Path

import atheris  # type: ignore[import-untyped]  # no type information published

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

with atheris.instrument_imports(include=["copa"]):
    from tests import test_fuzz_parsers as parsers


def main() -> None:
    name = sys.argv[1]
    check, _seeds = parsers.TARGETS[name]

    def one(data: bytes) -> None:
        check(data)

    atheris.Setup([sys.argv[0], *sys.argv[2:]], one)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
