"""Read a scanner report file and recognise its format by content, or run the scanner plugin `-s` names.

`-s` (scanner) semantics:
- None (no -s): any format copa reads, recognised by content: Trivy JSON, Grype JSON, a v1alpha1/v1alpha2 manifest.
- "trivy", "grype", "native": the file must be that format (native: v1alpha1/v1alpha2); another known format is
  named in the error with the -s value that reads it. So `-s trivy` with a Trivy report, Copacetic's default,
  reads it as before.
- any other NAME: the plugin `copa-NAME REPORT` runs and its stdout must be a v1alpha1/v1alpha2 manifest
  (copa.report.plugin).
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import replace
from pathlib import Path
from typing import Any

from copa.errors import ReportError, UsageError
from copa.report.grype import is_grype, parse_grype
from copa.report.model import Report
from copa.report.native import is_native, parse_native
from copa.report.plugin import BUILTIN_SCANNERS, DEFAULT_TIMEOUT, executable_name, run_plugin
from copa.report.trivy import is_trivy, parse_trivy

# Reports are a few MB at most; refuse something absurd before json.loads holds it all.
MAX_REPORT_BYTES = 256 * 1024 * 1024

# format key -> (how errors name it, the -s value that reads it)
_FORMATS = {
    "trivy": ("Trivy JSON", "trivy"),
    "grype": ("Grype JSON", "grype"),
    "native": ("a copa/Copacetic v1alpha1/v1alpha2 manifest", "native"),
}


def load_report(path: str | Path, scanner: str | None = None, *, plugin_timeout: float = DEFAULT_TIMEOUT) -> Report:
    """The report at `path`, read as `scanner` says (see the module doc). Errors are ReportError (UsageError for a
    scanner name that cannot name a plugin)."""
    p = Path(path)
    source = str(path)
    if scanner is not None and scanner not in BUILTIN_SCANNERS:
        executable_name(scanner)  # a bad name is a usage error before the file is even looked at
        _check_file(p, source)
        return _from_plugin(scanner, p, source, plugin_timeout)
    return parse_report(_read(p, source), source, scanner)


def _check_file(p: Path, source: str) -> None:
    try:
        if p.is_dir():
            raise ReportError(f"{source}: is a directory, not a report file")
        p.stat()
    except FileNotFoundError:
        raise ReportError(f"{source}: report file does not exist") from None
    except OSError as e:
        raise ReportError(f"{source}: cannot read report file: {e.strerror or e}") from None


def _read(p: Path, source: str) -> bytes:
    try:
        _check_file(p, source)
        with p.open("rb") as f:
            info = os.fstat(f.fileno())
            # A pipe (`-r <(trivy ...)`) is a fair way to pass a report; a device (/dev/zero, /dev/urandom) never
            # ends and would be read until memory runs out.
            if not (stat.S_ISREG(info.st_mode) or stat.S_ISFIFO(info.st_mode)):
                raise ReportError(f"{source}: is not a regular file or a pipe: pass the report file itself")
            if info.st_size > MAX_REPORT_BYTES:
                raise ReportError(f"{source}: {info.st_size} bytes is too big for a scanner report (at most "
                                  f"{MAX_REPORT_BYTES}); pass the scanner's JSON report of one image")
            # Bounded even so: a pipe has no size to check in advance, and a file may grow while it is read.
            data = f.read(MAX_REPORT_BYTES + 1)
        if len(data) > MAX_REPORT_BYTES:
            raise ReportError(f"{source}: more than {MAX_REPORT_BYTES} bytes is too big for a scanner report; pass "
                              f"the scanner's JSON report of one image")
        return data
    except PermissionError:
        raise ReportError(f"{source}: report file is not readable (permission denied)") from None
    except IsADirectoryError:
        raise ReportError(f"{source}: is a directory, not a report file") from None
    except OSError as e:
        raise ReportError(f"{source}: cannot read report file: {e.strerror or e}") from None


def _from_plugin(scanner: str, p: Path, source: str, timeout: float) -> Report:
    exe = executable_name(scanner)
    out = run_plugin(scanner, p, timeout)
    label = f"{exe}'s output for {source}"
    if not out.strip():
        raise ReportError(f"{label}: the plugin printed nothing; it must print a v1alpha1/v1alpha2 manifest on stdout")
    doc = _decode(out, label)
    kind = detect_format(doc)
    if kind != "native":
        what = _FORMATS[kind][0] if kind else "not an update manifest"
        raise ReportError(f"{label}: {what}: a scanner plugin must print a manifest with apiVersion v1alpha1 or "
                          f"v1alpha2 (Copacetic's scanner plugin interface); check the plugin")
    # Errors above name the plugin's output; the report itself is still the user's file.
    return replace(parse_native(doc, label), source=source)


def detect_format(doc: dict[str, Any]) -> str | None:
    """"trivy", "grype", "native" or None, from the document's top-level keys."""
    if is_native(doc):
        return "native"
    if is_trivy(doc):
        return "trivy"
    if is_grype(doc):
        return "grype"
    return None


def _decode(data: bytes, source: str) -> dict[str, Any]:
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ReportError(f"{source}: report is not UTF-8 text (bad byte at offset {e.start})") from None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise ReportError(f"{source}: not valid JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
    except RecursionError:
        raise ReportError(f"{source}: JSON is nested too deeply to be a scanner report") from None
    except ValueError as e:
        # Not a syntax error json names with a position: a number of more digits than Python converts (4300).
        reason = str(e).split(";")[0]  # without Python's advice to raise the interpreter's limit
        raise ReportError(f"{source}: not a valid scanner report ({reason}); regenerate it with the scanner") from None
    if not isinstance(doc, dict):
        raise ReportError(f"{source}: report must be a JSON object, not {type(doc).__name__}")
    return doc


def parse_report(data: bytes, source: str, scanner: str | None = None) -> Report:
    """The report in `data`; `scanner` None reads any known format, trivy/grype/native only that one."""
    if scanner is not None and scanner not in BUILTIN_SCANNERS:
        raise UsageError(f"-s {scanner} names a scanner plugin: read its report with load_report, which runs it")
    if not data.strip():
        raise ReportError(f"{source}: report file is empty: scan the image with `trivy image --format json`")
    doc = _decode(data, source)
    kind = detect_format(doc)
    if kind is None:
        raise ReportError(f"{source}: unknown report format: expected Trivy JSON (SchemaVersion 2), Grype JSON "
                          f"(`grype IMAGE -o json`) or a copa manifest (apiVersion v1alpha1/v1alpha2)")
    if scanner is not None and kind != scanner:
        wanted = _FORMATS[scanner][0] if scanner in _FORMATS else scanner
        found, reads_it = _FORMATS[kind]
        raise ReportError(f"{source}: is {found}, but -s {scanner} expects {wanted}: pass -s {reads_it}, "
                          f"or leave -s out to read any known format")
    if kind == "native":
        return parse_native(doc, source)
    if kind == "trivy":
        return parse_trivy(doc, source)
    return parse_grype(doc, source)
