"""--exit-on-eol: copa.eol against a local endoflife.date-shaped API (http.server in the test process).

The oracle for dates is Debian's own distro-info (`debian-distro-info`, `ubuntu-distro-info --unsupported
--date=D`): an API serving every release of distro-info-data's tables must give copa the verdict distro-info gives,
on the end-of-life day, the day before and the day after. The API's other answers (v1 flags, 404, 429, 500,
garbage, no server at all) follow Copacetic's pkg/utils/eol.go: only a clear end-of-life answer stops a patch.
"""

from __future__ import annotations

import csv
import datetime
import http.server
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from copa.eol import EolStatus, check_end_of_life, eol_error, eol_warning
from copa.errors import EndOfLifeError, UsageError
from tests.support import debimage
from tests.support.aptrepo import RepoServer
from tests.support.registry import free_port, require_tool

TODAY = datetime.date(2026, 12, 7)
ROOT = Path(__file__).resolve().parents[1]
DISTRO_INFO = Path("/usr/share/distro-info")


@dataclass
class Api:
    """Canned answers by path: (status, body). Paths not listed answer 404; every request is recorded."""

    routes: dict[str, tuple[int, bytes]] = field(default_factory=dict)
    seen: list[str] = field(default_factory=list)
    base: str = ""
    # path -> how many 429s to send before the route's answer
    throttle: dict[str, int] = field(default_factory=dict)

    def json(self, path: str, doc: Any, status: int = 200) -> None:
        self.routes[path] = (status, json.dumps(doc).encode())

    def v1(self, product: str, cycle: str, **result: Any) -> None:
        self.json(f"/api/v1/products/{product}/releases/{cycle}",
                  {"schema_version": "1.0.0", "generated_at": "2026-12-01T00:00:00Z",
                   "result": {"name": cycle, **result}})


@pytest.fixture(scope="module")
def api() -> Iterator[Api]:
    state = Api()

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            state.seen.append(self.path)
            left = state.throttle.get(self.path, 0)
            if left:
                state.throttle[self.path] = left - 1
                status, body = 429, b'{"message": "slow down"}'
            else:
                status, body = state.routes.get(self.path, (404, b'{"message": "Not Found"}'))
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    state.base = f"http://127.0.0.1:{server.server_address[1]}"
    yield state
    server.shutdown()
    server.server_close()


def v1(api: Api) -> str:
    return f"{api.base}/api/v1/products"


def check(api: Api, os_id: str, version: str, url: str | None = None, **kw: Any) -> EolStatus:
    return check_end_of_life(os_id, version, url or v1(api), 5.0, kw.pop("today", TODAY), **kw)


# -- the oracle: distro-info ------------------------------------------------------------------------------------


def _rows(name: str) -> list[dict[str, str]]:
    with (DISTRO_INFO / f"{name}.csv").open() as f:
        return list(csv.DictReader(f))


def _unsupported(tool: str, day: datetime.date) -> set[str]:
    out = subprocess.run([tool, "--unsupported", f"--date={day.isoformat()}"], capture_output=True, text=True,
                         check=True, timeout=30).stdout
    return set(out.split())


@pytest.mark.parametrize("os_id", ["debian", "ubuntu"])
def test_verdicts_match_distro_info(api: Api, os_id: str) -> None:
    """Every release distro-info-data knows, served as endoflife.date's v0 API serves it, on the end-of-life
    day, the day before and the day after: copa's verdict is distro-info's."""
    tool = require_tool(f"{os_id}-distro-info", "distro-info")
    releases: list[tuple[str, str, datetime.date]] = []  # (VERSION_ID, series, eol)
    for row in _rows(os_id):
        if not row["version"] or not row.get("eol"):
            continue
        if os_id == "debian":
            major = row["version"].split(".")[0]
            if int(major) < 4:
                continue  # 1.x-3.x share majors; os-release did not exist then anyway
            version_id, cycle = major, major
        else:
            version_id = row["version"].removesuffix(" LTS")
            cycle = version_id
        # Ubuntu's LTS server releases are supported until eol-server when that is later.
        ends = [datetime.date.fromisoformat(d) for d in (row["eol"], row.get("eol-server") or "") if d]
        eol = max(ends)
        product = "debian" if os_id == "debian" else "ubuntu"
        api.json(f"/api/{product}/{cycle}.json", {"cycle": cycle, "eol": eol.isoformat(), "lts": False})
        releases.append((version_id, row["series"], eol))
    assert len(releases) >= 8
    checked = 0
    for version_id, series, eol in releases:
        for day in (eol - datetime.timedelta(days=1), eol, eol + datetime.timedelta(days=1)):
            expected = series in _unsupported(tool, day)
            status = check(api, os_id, version_id, url=f"{api.base}/api", today=day)
            assert status.warning is None, status.warning
            assert status.is_eol == expected, (version_id, series, day, status)
            assert status.eol == eol
            checked += 1
    assert checked == 3 * len(releases)


# -- the v1 API (Copacetic's) -------------------------------------------------------------------------------------


def test_v1_past_date_is_eol(api: Api) -> None:
    api.v1("debian", "10", isEol=True, eolFrom="2022-09-10", isMaintained=False)
    status = check(api, "debian", "10")
    assert (status.product, status.cycle, status.eol, status.is_eol) == (
        "debian", "10", datetime.date(2022, 9, 10), True)
    assert status.url == f"{v1(api)}/debian/releases/10"
    error = eol_error(status)
    assert isinstance(error, EndOfLifeError) and error.exit_code == 10
    assert str(error) == ("debian 10 reached its end of life on 2022-09-10 (endoflife.date debian 10): rebase the "
                          "image on a supported release, or patch it anyway without --exit-on-eol")
    assert "\n" not in eol_warning(status) and "2022-09-10" in eol_warning(status)


def test_v1_future_date_is_not(api: Api) -> None:
    api.v1("alpine-linux", "3.23", isEol=False, eolFrom="2027-11-01", isMaintained=True)
    status = check(api, "alpine", "3.23.3")  # os-release VERSION_ID is the point release
    assert (status.product, status.cycle, status.eol, status.is_eol, status.warning) == (
        "alpine-linux", "3.23", datetime.date(2027, 11, 1), False, None)


def test_v1_flags(api: Api) -> None:
    # Security support over, LTS still on: isEol says end of life, and Copacetic stops on it.
    api.v1("debian", "11", isEol=True, eolFrom="2024-08-14", isMaintained=True)
    assert check(api, "debian", "11").is_eol
    # No date, and no support of any kind left.
    api.v1("rhel", "6", isEol=False, eolFrom=None, isMaintained=False)
    status = check(api, "rhel", "6.10")
    assert (status.cycle, status.eol, status.is_eol) == ("6", False, True)
    # true/false without a date.
    api.v1("oracle-linux", "10", isEol=False, eolFrom=None, isMaintained=True)
    status = check(api, "ol", "10.1")
    assert (status.product, status.cycle, status.eol, status.is_eol) == ("oracle-linux", "10", False, False)
    # A mirror generated before the date passed still says isEol false: the date counts.
    api.v1("ubuntu", "25.04", isEol=False, eolFrom="2026-01-15", isMaintained=True)
    assert check(api, "ubuntu", "25.04").is_eol


def test_v0_true_false(api: Api) -> None:
    api.json("/api/fedora/44.json", {"cycle": "44", "eol": False})
    api.json("/api/amazon-linux/2018.03.json", {"cycle": "2018.03", "eol": True})
    status = check(api, "fedora", "44", url=f"{api.base}/api/")
    assert (status.eol, status.is_eol, status.url) == (False, False, f"{api.base}/api/fedora/44.json")
    status = check(api, "amzn", "2018.03", url=f"{api.base}/api")
    assert (status.product, status.cycle, status.eol, status.is_eol) == ("amazon-linux", "2018.03", True, True)
    assert str(eol_error(status)).startswith("amzn 2018.03 is past its end of life (endoflife.date amazon-linux ")


@pytest.mark.parametrize(("os_id", "version", "codename", "path"), [
    ("debian", "12", "", "debian/releases/12"),
    ("debian", "", "bookworm", "debian/releases/12"),  # testing images carry only a codename
    ("debian", "stretch", "", "debian/releases/9"),
    ("ubuntu", "22.04", "", "ubuntu/releases/22.04"),
    ("alpine", "3.19.1", "", "alpine-linux/releases/3.19"),
    ("rhel", "9.4", "", "rhel/releases/9"),
    ("centos", "7", "", "centos/releases/7"),
    ("rocky", "8.9", "", "rocky-linux/releases/8"),
    ("almalinux", "9.3", "", "almalinux/releases/9"),
    ("ol", "8.10", "", "oracle-linux/releases/8"),
    ("amzn", "2", "", "amazon-linux/releases/2"),
    ("mariner", "2.0", "", "cbl-mariner/releases/2"),
    ("azurelinux", "3.0", "", "azure-linux/releases/3"),
    ("slackware", "15.0", "", "slackware/releases/15.0"),  # unknown: the ID and VERSION_ID as they are
])
def test_release_paths(api: Api, os_id: str, version: str, codename: str, path: str) -> None:
    before = len(api.seen)
    check(api, os_id, version, codename=codename)
    assert api.seen[before:] == [f"/api/v1/products/{path}"]


def test_rolling_release_is_not_looked_up(api: Api) -> None:
    before = len(api.seen)
    status = check(api, "wolfi", "20230201")
    assert api.seen[before:] == [] and not status.is_eol and status.warning is None


# -- no answer: warn and go on ----------------------------------------------------------------------------------


def test_unknown_release_warns(api: Api) -> None:
    status = check(api, "debian", "99")
    assert not status.is_eol and status.eol is None
    assert status.warning == (f"end-of-life check skipped for debian 99: debian 99 is not in the end-of-life "
                              f"database (404 from {v1(api)}/debian/releases/99); patching goes on")


def test_unreachable_api_warns_fast() -> None:
    url = f"http://127.0.0.1:{free_port()}/api/v1/products"
    started = time.monotonic()
    status = check_end_of_life("debian", "12", url, 5.0, TODAY)
    assert time.monotonic() - started < 3
    assert not status.is_eol
    assert status.warning == (f"end-of-life check skipped for debian 12: cannot reach {url}/debian/releases/12 "
                              "(connection refused); patching goes on")


@pytest.mark.parametrize("body", [b"<html>maintenance</html>", b'{"result": {"isEol": "yes"}}', b"[]",
                                  b'{"eol": "someday"}'])
def test_malformed_answer_warns(api: Api, body: bytes) -> None:
    api.routes["/api/v1/products/debian/releases/8"] = (200, body)
    status = check(api, "debian", "8")
    assert not status.is_eol and status.warning is not None and "\n" not in status.warning
    assert status.warning.startswith(f"end-of-life check skipped for debian 8: {v1(api)}/debian/releases/8 answered "
                                     "with no end-of-life release")


def test_server_error_warns(api: Api) -> None:
    api.routes["/api/v1/products/ubuntu/releases/20.04"] = (500, b"oops")
    status = check(api, "ubuntu", "20.04")
    assert not status.is_eol
    assert status.warning == (f"end-of-life check skipped for ubuntu 20.04: {v1(api)}/ubuntu/releases/20.04 "
                              "answered 500 Internal Server Error; patching goes on")


def test_rate_limit_is_retried(api: Api) -> None:
    path = "/api/v1/products/debian/releases/9"
    api.v1("debian", "9", isEol=True, eolFrom="2020-07-06", isMaintained=False)
    api.throttle[path] = 1
    before = len(api.seen)
    started = time.monotonic()
    assert check(api, "debian", "9").is_eol
    assert api.seen[before:] == [path, path]
    assert time.monotonic() - started >= 1.0  # Copacetic's first wait
    api.throttle[path] = 1000
    status = check(api, "debian", "9", retry_budget=0.3)
    assert not status.is_eol and status.warning is not None and "429" in status.warning
    api.throttle[path] = 0


def test_bad_api_url_is_usage_error() -> None:
    with pytest.raises(UsageError) as e:
        check_end_of_life("debian", "12", "endoflife.date/api", 5.0, TODAY)
    assert e.value.exit_code == 2
    assert str(e.value) == ("--eol-api-url 'endoflife.date/api' is not an http(s) URL: pass the API's base, "
                            "e.g. https://endoflife.date/api/v1/products")


# -- the command line ---------------------------------------------------------------------------------------------


def copa(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "copa", *args], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "COPA_DEBUG": ""}, timeout=300)


def test_cli_exit_on_eol(api: Api) -> None:
    """The hermetic Debian 12 image, planned with --dry-run against its local repository: refused with exit 10
    and one line when the API says end of life, planned as usual when it does not, or when the API cannot be
    reached (with a warning)."""
    base, repo = debimage.base_image(), debimage.hermetic_repo()
    with RepoServer(repo.root) as server:
        args = ["patch", "-i", base.image_ref, "--dry-run", *debimage.copa_args(server.url, repo), "--exit-on-eol"]
        api.v1("debian", "12", isEol=True, eolFrom="2026-06-10", isMaintained=True)
        refused = copa(*args, "--eol-api-url", v1(api))
        assert refused.returncode == 10, refused.stderr
        assert "Traceback" not in refused.stderr and refused.stdout == ""
        assert refused.stderr.strip().splitlines()[-1] == (
            "copa: error: debian 12 reached its end of life on 2026-06-10 (endoflife.date debian 12): rebase the "
            "image on a supported release, or patch it anyway without --exit-on-eol")

        api.v1("debian", "12", isEol=False, eolFrom="2099-06-10", isMaintained=True)
        planned = copa(*args, "--eol-api-url", v1(api))
        assert planned.returncode == 0, planned.stderr

        dead = f"http://127.0.0.1:{free_port()}/api/v1/products"
        warned = copa(*args, "--eol-api-url", dead)
        assert warned.returncode == 0, warned.stderr
        assert "end-of-life check skipped for debian 12: cannot reach" in warned.stderr
