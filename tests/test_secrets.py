"""Credentials never leave copa's requests: canary registry passwords, bearer tokens and repository logins are
absent from every byte copa prints (messages, --json, --progress json/plain, a COPA_DEBUG=1 traceback) and from
every blob it writes.

Real parts: Debian's docker-registry with htpasswd Basic auth and with Bearer token auth (tests/support/registry.py;
every token its issuer grants is recorded and becomes a canary too), and a package mirror demanding Basic auth
(tests/support/authmirror.py) serving the hermetic Debian repository. Each run is the real CLI; a run that is made to
fail fails for a real reason (refused credentials, a fix no repository has), except the internal-error case, which
has to inject the bug it reports: a traceback only exists for a bug.
"""

from __future__ import annotations

import base64
import gzip
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support import debimage
from tests.support.aptrepo import AptRepo
from tests.support.authmirror import AuthServer
from tests.support.registry import RunningRegistry, start_basic_registry, start_token_registry
from tests.support.trivy import write_report

ROOT = Path(__file__).resolve().parents[1]
# Canaries: strings that exist nowhere but in the credentials, so any occurrence is a leak.
REG_USER, REG_PASSWORD = "canary-reg-user", "Canary-Registry-Pw-7f3a9c"
REPO_USER, REPO_PASSWORD = "canary-repo-user", "Canary-Repo-Pw-1b2c3d"
WRONG_PASSWORD = "Canary-Wrong-Pw-5e6f7a"
SRC = "secrets/src"


@dataclass
class Registries:
    basic: RunningRegistry
    token: RunningRegistry
    tokens: list[str]  # every bearer token the token registry's issuer granted


@pytest.fixture(scope="module")
def registries(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registries]:
    basic = start_basic_registry(tmp_path_factory.mktemp("secrets-basic"), {REG_USER: REG_PASSWORD})
    token = start_token_registry(tmp_path_factory.mktemp("secrets-token"), {REG_USER: REG_PASSWORD})
    granted: list[str] = []
    assert token.issuer is not None
    issuer = token.issuer
    grant = issuer.grant

    def recording(user: str, scopes: list[str]) -> str:
        granted.append(grant(user, scopes))
        return granted[-1]

    issuer.grant = recording  # type: ignore[method-assign]
    try:
        base = debimage.base_image()
        for reg in (basic, token):
            proc = subprocess.run(["skopeo", "copy", "--dest-tls-verify=false", "--dest-creds",
                                   f"{REG_USER}:{REG_PASSWORD}", f"oci:{base.layout}:{base.ref}",
                                   f"docker://{reg.host}/{SRC}:1"], capture_output=True, text=True)
            assert proc.returncode == 0, proc.stderr
        yield Registries(basic, token, granted)
    finally:
        basic.stop()
        token.stop()


@pytest.fixture(scope="module")
def repo() -> AptRepo:
    return debimage.hermetic_repo()


@pytest.fixture(scope="module")
def mirror(repo: AptRepo) -> Iterator[AuthServer]:
    with AuthServer(repo.root, {REPO_USER: REPO_PASSWORD}) as server:
        yield server


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory, registries: Registries, mirror: AuthServer) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("secrets-files")

    def auth_file(name: str, password: str) -> Path:
        entry = {"auth": base64.b64encode(f"{REG_USER}:{password}".encode()).decode()}
        path = d / name
        path.write_text(json.dumps({"auths": {registries.basic.host: entry, registries.token.host: entry}}))
        return path

    netrc = d / "auth.conf"
    netrc.write_text(f"machine {mirror.url} login {REPO_USER} password {REPO_PASSWORD}\n")
    wrong_netrc = d / "wrong.conf"
    wrong_netrc.write_text(f"machine {mirror.url}\nlogin {REPO_USER}\npassword {WRONG_PASSWORD}\n")
    return {"auth": auth_file("auth.json", REG_PASSWORD), "wrong-auth": auth_file("wrong.json", WRONG_PASSWORD),
            "netrc": netrc, "wrong-netrc": wrong_netrc,
            "report": write_report(d / "trivy.json", debimage.FIXES),
            "report-app": write_report(d / "app.json", {"app": debimage.FIXES["app"]})}


def canaries(registries: Registries) -> list[str]:
    """Every secret and the encodings a leak would most likely take (an Authorization header's base64)."""
    secrets = [REG_PASSWORD, REPO_PASSWORD, WRONG_PASSWORD, *registries.tokens]
    for user, pw in ((REG_USER, REG_PASSWORD), (REPO_USER, REPO_PASSWORD), (REG_USER, WRONG_PASSWORD),
                     (REPO_USER, WRONG_PASSWORD)):
        secrets.append(base64.b64encode(f"{user}:{pw}".encode()).decode())
        secrets.append(f"{user}:{pw}")
    # A JWT's signature part is what makes it a credential; its header is shared by all tokens.
    secrets += [t.rsplit(".", 1)[-1] for t in registries.tokens]
    return secrets


def copa(*args: str, auth: Path, debug: bool = False, prefix: tuple[str, ...] = ()) -> str:
    """Run the real CLI; returns everything it printed (stdout and stderr)."""
    env = {**os.environ, "REGISTRY_AUTH_FILE": str(auth), "COPA_DEBUG": "1" if debug else ""}
    argv = [sys.executable, *prefix, *(() if prefix else ("-m", "copa")), *args]
    proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, env=env, timeout=300)
    return f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"


def assert_clean(printed: str, registries: Registries, where: str) -> None:
    assert registries.tokens or "token" not in where, "the token registry granted no token: the canary is empty"
    for secret in canaries(registries):
        assert secret not in printed, f"{where}: a credential ({secret[:6]}...) appears in copa's output:\n{printed}"


def assert_blobs_clean(layout: Path, registries: Registries) -> None:
    """No blob (the patch layer decompressed, configs, manifests) carries a credential into the image."""
    blobs = sorted((layout / "blobs" / "sha256").iterdir())
    assert blobs
    for blob in blobs:
        data = blob.read_bytes()
        if data[:2] == b"\x1f\x8b":
            data = gzip.decompress(data)
        for secret in canaries(registries):
            assert secret.encode() not in data, f"blob {blob.name} carries a credential"


def _repo_args(mirror: AuthServer, repo: AptRepo, netrc: Path) -> list[str]:
    return [*debimage.copa_args(mirror.url, repo), "--repository-auth", str(netrc)]


@pytest.mark.parametrize("kind", ["token", pytest.param("basic", marks=pytest.mark.sweep)])
def test_successful_push_prints_no_secret(kind: str, registries: Registries, mirror: AuthServer, repo: AptRepo,
                                          files: dict[str, Path], tmp_path: Path) -> None:
    """A whole run with every output: --json on stdout, --progress json (basic) or plain (token) on stderr."""
    reg = registries.basic if kind == "basic" else registries.token
    progress = "json" if kind == "basic" else "plain"
    printed = copa("patch", "-i", f"{reg.host}/{SRC}:1", "-r", str(files["report"]), "-t", f"{reg.host}/{SRC}:p",
                   "--push", "--oci-dir", str(tmp_path / "out"), "--ignore-errors", "--json", "--progress", progress,
                   *_repo_args(mirror, repo, files["netrc"]), auth=files["auth"])
    assert printed.startswith("exit 0\n"), printed
    assert '"digest"' in printed and ("start" in printed or "download" in printed), printed  # output was printed
    assert_clean(printed, registries, kind)
    assert_blobs_clean(tmp_path / "out", registries)
    # The canaries were in play: the mirror was sent the login (and the registry's issuer granted tokens).
    assert (REPO_USER, REPO_PASSWORD) in [login for _, login in mirror.requests]


@pytest.mark.parametrize("kind", ["basic", pytest.param("token", marks=pytest.mark.sweep)])
def test_refused_registry_password_is_not_printed(kind: str, registries: Registries, files: dict[str, Path],
                                                  tmp_path: Path) -> None:
    reg = registries.basic if kind == "basic" else registries.token
    printed = copa("patch", "-i", f"{reg.host}/{SRC}:1", "-r", str(files["report"]), "--oci-dir", str(tmp_path),
                   "--json", "--progress", "json", auth=files["wrong-auth"], debug=True)
    assert printed.startswith("exit 4\n"), printed
    assert_clean(printed, registries, kind)


def test_refused_repository_password_is_not_printed(registries: Registries, mirror: AuthServer, repo: AptRepo,
                                                    files: dict[str, Path], tmp_path: Path) -> None:
    printed = copa("patch", "-i", f"{registries.basic.host}/{SRC}:1", "-r", str(files["report"]), "--oci-dir",
                   str(tmp_path), "--progress", "plain", *_repo_args(mirror, repo, files["wrong-netrc"]),
                   auth=files["auth"], debug=True)
    assert printed.startswith("exit 4\n") and "refused the credentials" in printed, printed
    assert_clean(printed, registries, "wrong repository password")


@pytest.mark.sweep
def test_credentials_in_a_mirror_url_are_not_printed(registries: Registries, mirror: AuthServer, repo: AptRepo,
                                                     files: dict[str, Path], tmp_path: Path) -> None:
    """apt's `http://user:pass@host/` syntax, given on the command line: used, never shown, even when it fails."""
    url = mirror.url.replace("http://", f"http://{REPO_USER}:{REPO_PASSWORD}@")
    keyring = str(repo.key.keyring) if repo.key else ""
    ok = copa("patch", "-i", f"{registries.basic.host}/{SRC}:1", "-r", str(files["report"]), "--oci-dir",
              str(tmp_path / "ok"), "--ignore-errors", "--json", "--progress", "json", "--mirror",
              f"{debimage.REPO_URL}={url}", "--keyring", keyring, auth=files["auth"])
    assert ok.startswith("exit 0\n"), ok
    assert_clean(ok, registries, "user:pass@ mirror")
    wrong = url.replace(REPO_PASSWORD, WRONG_PASSWORD)
    failed = copa("patch", "-i", f"{registries.basic.host}/{SRC}:1", "-r", str(files["report"]), "--oci-dir",
                  str(tmp_path / "failed"), "--progress", "plain", "--mirror", f"{debimage.REPO_URL}={wrong}",
                  "--keyring", keyring, auth=files["auth"], debug=True)
    assert failed.startswith("exit 4\n"), failed
    assert_clean(failed, registries, "wrong user:pass@ mirror")
    bad = copa("patch", "-i", f"{registries.basic.host}/{SRC}:1", "-r", str(files["report"]), "--oci-dir",
               str(tmp_path / "bad"), "--repository", f"deb {wrong} stable", "--keyring", keyring,
               auth=files["auth"])
    assert bad.startswith("exit 2\n"), bad  # a sources line with no component: quoted back, without the password
    assert_clean(bad, registries, "malformed --repository line")


@pytest.mark.sweep
def test_resolution_failure_after_authenticated_work(registries: Registries, mirror: AuthServer, repo: AptRepo,
                                                     files: dict[str, Path], tmp_path: Path) -> None:
    """A failure late in the run (ghost has no fix and --ignore-errors is off), after tokens were used."""
    reg = registries.token
    printed = copa("patch", "-i", f"{reg.host}/{SRC}:1", "-r", str(files["report"]), "-t", f"{reg.host}/{SRC}:q",
                   "--push", "--json", "--progress", "json", *_repo_args(mirror, repo, files["netrc"]),
                   auth=files["auth"], debug=True)
    assert printed.startswith("exit 7\n"), printed
    assert_clean(printed, registries, "resolution failure (token)")


# A bug injected just before the outputs are written, so that the traceback is printed with every credential of the
# run loaded (registry tokens cached in the client, the repository logins read).
_BUG = (
    "import sys, copa.oci.layout as t\n"  # transport imports write_layout from here when it writes a layout
    "def bug(*a, **k):\n"
    "    raise RuntimeError('injected bug')\n"
    "t.write_layout = bug\n"
    "from copa.cli import main\n"
    "sys.exit(main(sys.argv[1:]))\n"
)


def test_debug_traceback_of_an_internal_error(registries: Registries, mirror: AuthServer, repo: AptRepo,
                                              files: dict[str, Path], tmp_path: Path) -> None:
    reg = registries.token
    printed = copa("patch", "-i", f"{reg.host}/{SRC}:1", "-r", str(files["report-app"]), "--oci-dir",
                   str(tmp_path / "out"), "--progress", "plain", *_repo_args(mirror, repo, files["netrc"]),
                   auth=files["auth"], debug=True, prefix=("-c", _BUG))
    assert "Traceback" in printed and "injected bug" in printed, printed
    assert registries.tokens
    assert_clean(printed, registries, "COPA_DEBUG traceback")
