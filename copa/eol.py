"""Is the image's OS release past its end of life? Asked of an endoflife.date-compatible API (--exit-on-eol).

Copacetic's check (pkg/utils/eol.go), kept in what it does:

- the release is looked up as `PRODUCT/CYCLE`: the cycle is the major version for Debian (a codename is turned
  into its number) and the RHEL family, `major.minor` for Ubuntu and Alpine, VERSION_ID as it is elsewhere;
- the API is endoflife.date's v1 (`{base}/{product}/releases/{cycle}`, base `.../api/v1/products`, answering
  `{"result": {"isEol": ..., "eolFrom": ..., "isMaintained": ...}}`), and a release is end of life when `isEol`
  is true or `isMaintained` false. A base that does not end in `/products` is read as the v0 API
  (`{base}/{product}/{cycle}.json`, answering `{"eol": "YYYY-MM-DD" | true | false}`);
- HTTP 429 is retried with 1, 2, 4, 8 s waits for at most 15 s;
- when no answer can be had (release not listed, API unreachable or rate limiting, an answer that is not a
  release), the check warns and the patch goes on: the check guards against a known-dead release, it does not
  stand in the way of patching when the API is down.

Where it differs, on purpose: products are endoflife.date's own ids (`alpine-linux`, `rocky-linux`, `oracle-linux`,
`rhel`, `almalinux`; Copacetic asks `alpine`, `rocky`, `redhat`, `oracle`, ..., which the site only reaches by a
redirect, or not at all), an end-of-life date counts against `today` too (a mirror of the API refreshed days ago
still knows a date that has since passed), and from that day on, as Debian's and Ubuntu's distro-info count it
(endoflife.date's generator sets `isEol` only the day after). Rolling releases (Wolfi, Chainguard) are not looked
up: they have no end of life.
"""

from __future__ import annotations

import datetime
import json
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

from copa.errors import EndOfLifeError, UsageError
from copa.net import describe_connection_error
from copa.web.errors import WebError
from copa.web.response import Response
from copa.web.session import Session

_MAX_BODY = 1 << 20  # one release's answer is a few hundred bytes
_RETRY_BUDGET = 15.0  # seconds of 429 retries, as Copacetic

# Debian codenames, for an os-release whose VERSION_ID is a name (Copacetic maps the same ones).
_DEBIAN_CODENAMES = {
    "buzz": "1", "rex": "1", "bo": "1", "hamm": "2", "slink": "2", "potato": "2", "woody": "3", "sarge": "3",
    "etch": "4", "lenny": "5", "squeeze": "6", "wheezy": "7", "jessie": "8", "stretch": "9", "buster": "10",
    "bullseye": "11", "bookworm": "12", "trixie": "13", "forky": "14",
}

# os-release ID -> (endoflife.date product, how many leading VERSION_ID components name the cycle; 0: all of it)
_PRODUCTS: dict[str, tuple[str, int]] = {
    "debian": ("debian", 1),
    "ubuntu": ("ubuntu", 2),
    "alpine": ("alpine-linux", 2),
    "rhel": ("rhel", 1),
    "redhat": ("rhel", 1),
    "centos": ("centos", 1),
    "rocky": ("rocky-linux", 1),
    "almalinux": ("almalinux", 1),
    "alma": ("almalinux", 1),
    "ol": ("oracle-linux", 1),
    "oracle": ("oracle-linux", 1),
    "amzn": ("amazon-linux", 0),
    "amazon": ("amazon-linux", 0),
    "fedora": ("fedora", 0),
    "mariner": ("cbl-mariner", 1),
    "cbl-mariner": ("cbl-mariner", 1),
    "azurelinux": ("azure-linux", 1),
    "sles": ("sles", 0),
    "opensuse-leap": ("opensuse", 0),
}
_ROLLING = frozenset({"wolfi", "chainguard", "opensuse-tumbleweed", "arch", "archlinux"})


@dataclass(frozen=True, slots=True)
class EolStatus:
    """The answer for one OS release.

    `eol` is the API's end-of-life date, or its true/false where it has no date, or None when there was no answer
    (then `warning` says why, in one line, and `is_eol` is False: the patch goes on)."""

    os_id: str
    version_id: str
    product: str
    cycle: str
    eol: datetime.date | bool | None
    is_eol: bool
    url: str | None = None
    warning: str | None = None

    @property
    def release(self) -> str:
        return f"{self.os_id} {self.version_id}".strip()


def release_of(os_release_id: str, version_id: str, codename: str = "") -> tuple[str, str] | None:
    """(product, cycle) to look up, or None for a rolling release."""
    os_id = os_release_id.strip().lower()
    if os_id in _ROLLING:
        return None
    version = (version_id or codename).strip().lower()
    product, parts = _PRODUCTS.get(os_id, (os_id, 0))
    if product == "ubuntu":
        version = version.replace("lts", "").strip()
    if product == "debian" and version and not version[0].isdigit():
        version = _DEBIAN_CODENAMES.get(version, version)
    if parts and version[:1].isdigit():
        version = ".".join(version.split(".")[:parts])
    return product, version


def release_url(api_url: str, product: str, cycle: str) -> str:
    """Where the API keeps one release: v1 under a `.../products` base (Copacetic's), v0 otherwise."""
    base = api_url.strip().rstrip("/")
    parts = urlsplit(base)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise UsageError(f"--eol-api-url {api_url!r} is not an http(s) URL: pass the API's base, "
                         "e.g. https://endoflife.date/api/v1/products")
    last = parts.path.rsplit("/", 1)[-1]
    if last == "v1":
        base, last = base + "/products", "products"
    p, c = quote(product, safe=""), quote(cycle, safe="")
    return f"{base}/{p}/releases/{c}" if last == "products" else f"{base}/{p}/{c}.json"


def _date(value: Any) -> datetime.date | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.date.fromisoformat(value.strip()[:10])
    except ValueError:
        return None


def _answer(doc: Any, today: datetime.date) -> tuple[datetime.date | bool, bool] | None:
    """(eol, is_eol) from a v1 or v0 release document, None if it is neither."""
    if not isinstance(doc, dict):
        return None
    result = doc.get("result")
    if isinstance(result, dict) and ("isEol" in result or "isMaintained" in result):
        flag, maintained = result.get("isEol"), result.get("isMaintained")
        if not isinstance(flag, bool | None) or not isinstance(maintained, bool | None):
            return None
        when = _date(result.get("eolFrom"))
        # isMaintained false: no support of any kind is left (endoflife.date's meaning), whatever isEol says.
        past = when is not None and today >= when
        return (when if when is not None else bool(flag)), bool(flag) or maintained is False or past
    if "eol" in doc:
        value = doc["eol"]
        if isinstance(value, bool):
            return value, value
        when = _date(value)
        if when is None:
            return None
        return when, today >= when
    return None


def _read(resp: Response) -> bytes:
    out = bytearray()
    for chunk in resp.iter_content(1 << 14):
        out += chunk
        if len(out) > _MAX_BODY:
            break
    return bytes(out)


def check_end_of_life(os_release_id: str, version_id: str, api_url: str, timeout: float = 10.0,
                      today: datetime.date | None = None, *, codename: str = "", ca_bundle: str | None = None,
                      retry_budget: float = _RETRY_BUDGET) -> EolStatus:
    """Ask the API whether the release is past its end of life. Never raises for the API's faults (they come
    back as a `warning`); a malformed `api_url` is a UsageError."""
    today = today or datetime.date.today()
    found = release_of(os_release_id, version_id, codename)
    if found is None:
        return EolStatus(os_release_id, version_id, os_release_id, "", False, False)
    product, cycle = found

    def unknown(url: str | None, why: str) -> EolStatus:
        label = f"{os_release_id} {version_id}".strip() or "the image's OS"
        return EolStatus(os_release_id, version_id, product, cycle, None, False, url,
                         f"end-of-life check skipped for {label}: {why}; patching goes on")

    if not product or not cycle:
        return unknown(None, "its os-release names no ID or VERSION_ID")
    url = release_url(api_url, product, cycle)
    started = time.monotonic()
    wait = 1.0
    with Session() as session:
        while True:
            try:
                resp = session.get(url, timeout=timeout, verify=ca_bundle or True, stream=True,
                                   headers={"User-Agent": "copa", "Accept": "application/json"})
            except WebError as e:
                return unknown(url, f"cannot reach {url} ({describe_connection_error(e)})")
            with resp:
                if resp.status_code == 429:
                    left = retry_budget - (time.monotonic() - started)
                    if left <= 0:
                        return unknown(url, f"{url} kept answering 429 Too Many Requests for {retry_budget:g} s")
                    time.sleep(min(wait, left))
                    wait = min(wait * 2, 8.0)
                    continue
                if resp.status_code == 404:
                    return unknown(url, f"{product} {cycle} is not in the end-of-life database (404 from {url})")
                if resp.status_code != 200:
                    return unknown(url, f"{url} answered {resp.status_code} {resp.reason or ''}".rstrip())
                try:
                    body = _read(resp)
                except WebError as e:
                    return unknown(url, f"lost the connection to {url} ({describe_connection_error(e)})")
            break
    try:
        doc = json.loads(body)
    except ValueError:
        doc = None
    answer = _answer(doc, today)
    if answer is None:
        return unknown(url, f"{url} answered with no end-of-life release (expected endoflife.date's "
                            '{"result": {"isEol": ...}} or {"eol": ...})')
    eol, is_eol = answer
    return EolStatus(os_release_id, version_id, product, cycle, eol, is_eol, url)


def _when(status: EolStatus) -> str:
    if isinstance(status.eol, datetime.date):
        return f"reached its end of life on {status.eol.isoformat()}"
    return "is past its end of life"


def eol_warning(status: EolStatus) -> str:
    """One line for an end-of-life release patched anyway (Copacetic warns so without --exit-on-eol)."""
    return (f"{status.release} {_when(status)} (endoflife.date {status.product} {status.cycle}): patching may fail "
            "or miss fixes its archived repositories never got; consider a supported base image")


def eol_error(status: EolStatus) -> EndOfLifeError:
    """The --exit-on-eol refusal (exit 10), one line."""
    return EndOfLifeError(
        f"{status.release} {_when(status)} (endoflife.date {status.product} {status.cycle}): rebase the image "
        "on a supported release, or patch it anyway without --exit-on-eol"
    )
