"""docker config.json credential lookup (auths, credHelpers, credsStore) and challenge parsing."""

from __future__ import annotations

import base64
import json
import sys
from pathlib import Path

import pytest

from copa.errors import AuthError, LocalIOError
from copa.oci.auth import parse_www_authenticate
from copa.oci.credentials import Credential, default_auth_file, lookup


def write_config(tmp_path: Path, doc: object) -> Path:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(doc))
    return path


def install_helper(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, secrets: dict[str, list[str]]) -> Path:
    """A real `docker-credential-<name>` program on PATH, answering `get` from `secrets`; logs queries."""
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    (tmp_path / f"{name}.json").write_text(json.dumps(secrets))
    log = tmp_path / f"{name}.log"
    script = bindir / f"docker-credential-{name}"
    script.write_text(
        f"#!{sys.executable}\n"
        "import json, sys\n"
        f"secrets = json.load(open({str(tmp_path / (name + '.json'))!r}))\n"
        "assert sys.argv[1:] == ['get'], sys.argv\n"
        "server = sys.stdin.read().strip()\n"
        f"open({str(log)!r}, 'a').write(server + '\\n')\n"
        "if server not in secrets:\n"
        "    print('credentials not found in native keychain'); sys.exit(1)\n"
        "user, secret = secrets[server]\n"
        "print(json.dumps({'ServerURL': server, 'Username': user, 'Secret': secret}))\n"
    )
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}:{Path(sys.executable).parent}:/usr/bin:/bin")
    return log


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def test_auths_base64_and_fields(tmp_path: Path) -> None:
    cfg = write_config(
        tmp_path,
        {
            "auths": {
                "reg.example:5000": {"auth": b64("bob:pa:ss")},
                "https://other.example/v1/": {"username": "carol", "password": "pw"},
                "tok.example": {"identitytoken": "refresh-123"},
            }
        },
    )
    assert lookup("reg.example:5000", cfg) == Credential("bob", "pa:ss")
    assert lookup("other.example", cfg) == Credential("carol", "pw")
    assert lookup("tok.example", cfg) == Credential(identity_token="refresh-123")
    assert lookup("unknown.example", cfg) is None


def test_docker_hub_legacy_key(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, {"auths": {"https://index.docker.io/v1/": {"auth": b64("hubuser:hubpw")}}})
    assert lookup("docker.io", cfg) == Credential("hubuser", "hubpw")


def test_missing_file_is_anonymous(tmp_path: Path) -> None:
    assert lookup("reg.example", tmp_path / "nope.json") is None


def test_malformed_file(tmp_path: Path) -> None:
    bad = tmp_path / "config.json"
    bad.write_text("{not json")
    with pytest.raises(LocalIOError, match="not valid JSON") as e:
        lookup("reg.example", bad)
    assert e.value.exit_code == 8
    cfg = write_config(tmp_path, {"auths": {"reg.example": {"auth": "!!!notbase64"}}})
    with pytest.raises(LocalIOError, match="not base64"):
        lookup("reg.example", cfg)


def test_default_auth_file_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = write_config(tmp_path, {"auths": {"env.example": {"auth": b64("u:p")}}})
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(cfg))
    assert default_auth_file() == cfg
    assert lookup("env.example") == Credential("u", "p")
    monkeypatch.delenv("REGISTRY_AUTH_FILE")
    monkeypatch.delenv("DOCKER_CONFIG", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert default_auth_file() == tmp_path / ".docker" / "config.json"


def test_cred_helpers_and_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = install_helper(
        tmp_path,
        monkeypatch,
        "copatest",
        {
            "helped.example": ["dave", "helper-pw"],
            "stored.example": ["<token>", "refresh-xyz"],
            "https://index.docker.io/v1/": ["hub", "hubsecret"],
        },
    )
    cfg = write_config(
        tmp_path,
        {
            # credsStore leaves empty auths entries behind; they must not shadow the store.
            "auths": {"stored.example": {}, "file.example": {"auth": b64("erin:filepw")}},
            "credHelpers": {"helped.example": "copatest"},
            "credsStore": "copatest",
        },
    )
    assert lookup("helped.example", cfg) == Credential("dave", "helper-pw")
    assert lookup("stored.example", cfg) == Credential(identity_token="refresh-xyz")
    assert lookup("docker.io", cfg) == Credential("hub", "hubsecret")
    assert lookup("file.example", cfg) == Credential("erin", "filepw")
    assert lookup("absent.example", cfg) is None  # helper says "credentials not found"
    assert log.read_text().split() == [
        "helped.example",
        "stored.example",
        "https://index.docker.io/v1/",
        "absent.example",
    ]


def test_missing_helper(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    cfg = write_config(tmp_path, {"credsStore": "nosuchhelper"})
    with pytest.raises(AuthError, match="docker-credential-nosuchhelper is not on PATH") as e:
        lookup("reg.example", cfg)
    assert e.value.exit_code == 4


def test_credential_repr_hides_secrets() -> None:
    assert "topsecret" not in repr(Credential("u", "topsecret", "topsecret"))


def test_parse_www_authenticate() -> None:
    [bearer] = parse_www_authenticate(
        'Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull,push"'
    )
    assert bearer.scheme == "bearer"
    assert dict(bearer.params) == {
        "realm": "https://auth.example/token",
        "service": "registry.example",
        "scope": "repository:a/b:pull,push",
    }
    basic, second = parse_www_authenticate('Basic realm="copa test", Bearer realm="https://x/t",service=svc')
    assert (basic.scheme, dict(basic.params)) == ("basic", {"realm": "copa test"})
    assert (second.scheme, dict(second.params)) == ("bearer", {"realm": "https://x/t", "service": "svc"})
