"""Read a scanner report file and recognise its format by content."""

from __future__ import annotations

import json
from pathlib import Path

from copa.errors import ReportError
from copa.report.model import Report
from copa.report.native import is_native, parse_native
from copa.report.trivy import is_trivy, parse_trivy

# Reports are a few MB at most; refuse something absurd before json.loads holds it all.
MAX_REPORT_BYTES = 256 * 1024 * 1024


def load_report(path: str | Path) -> Report:
    """The report at `path` (Trivy JSON or a copa v1alpha1/v1alpha2 manifest). Errors are ReportError."""
    p = Path(path)
    source = str(path)
    try:
        if p.is_dir():
            raise ReportError(f"{source}: is a directory, not a report file")
        size = p.stat().st_size
        if size > MAX_REPORT_BYTES:
            raise ReportError(f"{source}: {size} bytes is too big for a scanner report")
        data = p.read_bytes()
    except FileNotFoundError:
        raise ReportError(f"{source}: report file does not exist") from None
    except PermissionError:
        raise ReportError(f"{source}: report file is not readable (permission denied)") from None
    except OSError as e:
        raise ReportError(f"{source}: cannot read report file: {e.strerror or e}") from None
    return parse_report(data, source)


def parse_report(data: bytes, source: str) -> Report:
    if not data.strip():
        raise ReportError(f"{source}: report file is empty: scan the image with `trivy image --format json`")
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
    if not isinstance(doc, dict):
        raise ReportError(f"{source}: report must be a JSON object, not {type(doc).__name__}")
    if is_native(doc):
        return parse_native(doc, source)
    if is_trivy(doc):
        return parse_trivy(doc, source)
    raise ReportError(f"{source}: unknown report format: expected Trivy JSON (SchemaVersion 2) "
                      f"or a copa manifest (apiVersion v1alpha1/v1alpha2)")
