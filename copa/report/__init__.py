"""Scanner reports: which OS packages of an image have vulnerabilities with fixes."""

from copa.report.directory import load_reports
from copa.report.load import load_report, parse_report
from copa.report.model import (
    Compare,
    Finding,
    OSInfo,
    Report,
    ReportedPackage,
    Vulnerability,
    build_packages,
    comparator_for,
    register_comparator,
    simple_compare,
)

__all__ = [
    "Compare",
    "Finding",
    "OSInfo",
    "Report",
    "ReportedPackage",
    "Vulnerability",
    "build_packages",
    "comparator_for",
    "load_report",
    "load_reports",
    "parse_report",
    "register_comparator",
    "simple_compare",
]
