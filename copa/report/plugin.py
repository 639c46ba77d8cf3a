"""Copacetic's scanner plugins: `-s NAME` runs `copa-NAME REPORT` from PATH and reads what it prints.

The protocol is Copacetic's (pkg/report/report.go customParseScanReport, website/docs/scanner-plugins.md): the
executable `copa-NAME` on PATH gets the report path as its one argument and prints an update manifest, apiVersion
v1alpha1 or v1alpha2, on standard output. Copacetic reads stdout and stderr together; we read stdout only, so a
plugin's log lines cannot corrupt the document, and keep the start of stderr for the error message.

The plugin runs in its own session with no stdin, and is killed (its whole process group) when it overruns the
time limit or prints more than a manifest could reasonably be.
"""

from __future__ import annotations

import contextlib
import os
import re
import selectors
import shutil
import signal
import time
from pathlib import Path
from typing import TYPE_CHECKING

from copa.errors import ReportError, UsageError

if TYPE_CHECKING:
    import subprocess

# The names copa reads itself; any other -s value names a plugin.
BUILTIN_SCANNERS = ("trivy", "grype", "native")
# Copacetic's check of a plugin name (it becomes part of an executable's name looked up on PATH).
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")
DEFAULT_TIMEOUT = 300.0
# An update manifest lists each vulnerable package once per CVE: a few MB for the largest images.
MAX_OUTPUT_BYTES = 64 * 1024 * 1024
_STDERR_KEPT = 64 * 1024
_CHUNK = 64 * 1024


def executable_name(scanner: str) -> str:
    if not _NAME.fullmatch(scanner):
        raise UsageError(f"invalid scanner name {scanner!r}: use trivy, grype, native, or the NAME of a plugin "
                         f"copa-NAME (letters, digits, '-' and '_')")
    return f"copa-{scanner}"


def run_plugin(scanner: str, report: Path, timeout: float = DEFAULT_TIMEOUT, max_output: int | None = None) -> bytes:
    """What `copa-SCANNER REPORT` prints on stdout, after it exited 0. Errors are one-line ReportErrors."""
    import subprocess  # here: only a plugin needs it, and reading a report comes before a patch's first request

    exe = executable_name(scanner)
    max_output = MAX_OUTPUT_BYTES if max_output is None else max_output
    found = shutil.which(exe)
    if found is None:
        raise ReportError(f"scanner plugin {exe} not found on PATH: install it as an executable named {exe} in a "
                          f"PATH directory, or use -s {', '.join(BUILTIN_SCANNERS)} (read by copa itself)")
    try:
        proc = subprocess.Popen([found, str(report)], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, start_new_session=True)
    except OSError as e:
        raise ReportError(f"scanner plugin {found} cannot be run: {e.strerror or e}; check that it is an executable "
                          f"with a #! line") from None
    try:
        out, err, reason = _collect(proc, timeout, max_output)
    finally:
        _stop(proc)
    if reason is not None:
        raise ReportError(f"scanner plugin {exe} {reason} on {report}{_first_line(err)}")
    status = proc.returncode
    if status != 0:
        how = f"was killed by signal {-status}" if status < 0 else f"exited with status {status}"
        raise ReportError(f"scanner plugin {exe} {how} on {report}{_first_line(err)}")
    return out


def _collect(proc: subprocess.Popen[bytes], timeout: float, max_output: int) -> tuple[bytes, bytes, str | None]:
    """(stdout, the start of stderr, why it was cut short or None). Both pipes are drained together so a plugin
    filling one of them while we wait on the other cannot stall."""
    import subprocess

    assert proc.stdout is not None and proc.stderr is not None
    deadline = time.monotonic() + timeout
    out = bytearray()
    err = bytearray()
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ, out)
        sel.register(proc.stderr, selectors.EVENT_READ, err)
        while sel.get_map():
            left = deadline - time.monotonic()
            if left <= 0:
                return bytes(out), bytes(err), f"timed out after {timeout:g} s"
            for key, _ in sel.select(left):
                chunk = os.read(key.fd, _CHUNK)
                if not chunk:
                    sel.unregister(key.fileobj)
                    continue
                buf: bytearray = key.data
                if buf is out:
                    out += chunk
                    if len(out) > max_output:
                        return bytes(out), bytes(err), (f"printed more than {max_output} bytes, too much for an "
                                                        f"update manifest")
                elif len(err) < _STDERR_KEPT:
                    err += chunk[: _STDERR_KEPT - len(err)]
    try:
        proc.wait(max(deadline - time.monotonic(), 0.1))
    except subprocess.TimeoutExpired:
        return bytes(out), bytes(err), f"timed out after {timeout:g} s"
    return bytes(out), bytes(err), None


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Kill what is left of the plugin's process group (only ours: it runs in a session of its own). Done only while
    the plugin is not yet reaped, so its pid, which names the group, cannot have been reused."""
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    for pipe in (proc.stdout, proc.stderr):
        if pipe is not None:
            pipe.close()


def _first_line(err: bytes) -> str:
    for line in err.decode("utf-8", "replace").splitlines():
        if line.strip():
            text = line.strip()
            return f": {text[:300]}{'...' if len(text) > 300 else ''}"
    return " (nothing on stderr)"
