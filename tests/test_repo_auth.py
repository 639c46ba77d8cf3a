"""Package repositories behind credentials and client certificates (copa/pkg/repoauth.py, copa/pkg/fetch.py).

The matcher is checked against apt itself: for generated auth.conf/auth.conf.d files and URLs, `apt-helper
download-file` (apt's own acquire methods, reading the same files through Dir::Etc::netrc{,parts}) fetches every URL
from loopback HTTP and HTTPS servers that record the Basic login each request carried; copa's RepoAuth must pick
the same login for every URL (or none where apt sends none). End to end, the hermetic Debian image
(tests/support/debimage.py) is patched through the real CLI from its signed repository served by a mirror that
answers 401 without the right login (tests/support/authmirror.py), over HTTP and over HTTPS demanding a client
certificate; the patched layer is scanned for the password.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from copa.errors import LocalIOError, UsageError
from copa.net import redact, redact_text
from copa.pkg.base import RepositoryOptions
from copa.pkg.repoauth import APT_AUTH_DIR, Login, NetrcFile, RepoAuth, apt_auth_files, user_auth
from tests.support import aptoracle, debimage, images
from tests.support.aptrepo import AptRepo
from tests.support.authmirror import AuthServer, Tls, make_tls
from tests.support.trivy import write_report

ROOT = Path(__file__).resolve().parents[1]
APT_HELPER = "/usr/lib/apt/apt-helper"
USER = "copa-user"
PASSWORD = "Pw-7c1e2f-not-in-any-layer"
WRONG = "Wrong-9d3a-must-not-be-printed"


# --- apt's own expectations (apt's test/libapt/authconf_test.cc) ----------------------------------------------------

APT_TEST_FILE = """
machine example.netter login bar password foo
machine example.net login foo password bar

machine example.org:90 login apt password apt
machine\texample.org:8080
login
example\tpassword \t foobar

machine example.org
login anonymous
password pass

machine example.com/foo login user1 unknown token password pass1
machine example.com/bar password pass2 login user2
\t\t  unknown token
machine example.com/user login user
machine example.netter login unused password firstentry
machine socks5h://example.last/debian login debian password rules"""


@pytest.mark.parametrize(("url", "want"), [
    ("https://example.net/foo", ("foo", "bar")),
    ("https://user:pass@example.net/foo", ("user", "pass")),
    ("https://example.org:90/foo", ("apt", "apt")),
    ("https://example.org:8080/foo", ("example", "foobar")),
    ("https://example.net:42/foo", ("foo", "bar")),
    ("https://example.org/foo", ("anonymous", "pass")),
    ("https://example.com/apt", None),
    ("https://example.com/foo", ("user1", "pass1")),
    ("https://example.com/fooo", ("user1", "pass1")),
    ("https://example.com/fo", None),
    ("https://example.com/bar", ("user2", "pass2")),
    ("https://example.com/user", ("user", "")),
    ("socks5h://example.last/debian", ("debian", "rules")),
    ("socks5h://example.last/debianx", ("debian", "rules")),
    ("socks5h://example.last/rules", None),
    ("https://example.netter/", ("bar", "foo")),
    ("http://example.net/foo", None),  # no scheme in the entry: https only
])
def test_apt_testsuite_cases(url: str, want: tuple[str, str] | None) -> None:
    auth = RepoAuth((NetrcFile.parse(APT_TEST_FILE, "auth.conf"),))
    got = auth.login_for(url)
    assert (None if got is None else (got.user, got.password)) == want


# --- differential: apt-helper over generated files and URLs ---------------------------------------------------------

def _entry(rng: random.Random, ports: tuple[int, int], n: int) -> str:
    scheme = rng.choice(["", "", "http://", "https://"])
    host = rng.choice(["127.0.0.1", "localhost"])
    port = rng.choice(["", "", f":{ports[0]}", f":{ports[1]}", ":1"])
    path = rng.choice(["", "", "/a", "/a/", "/ab", "/a/b", "/b", "/"])
    words = ["machine", f"{scheme}{host}{port}{path}"]
    fields = rng.choice([("login", "password"), ("password", "login"), ("login",), ("password",), ()])
    for field in fields:
        words += [field, f"{field[0]}{n}"]
    if rng.random() < 0.15:
        words[2:2] = ["account", "x"]  # an unknown token and its value: ignored
    sep = rng.choice([" ", "\n", "\t", " \t "])
    text = sep.join(words)
    if rng.random() < 0.1:  # apt has no comments: the words of a "comment" are tokens like any other
        text = f"# old machine {host} login old{n} password old{n}\n" + text
    return text + "\n"


def _auth_files(rng: random.Random, ports: tuple[int, int]) -> tuple[str | None, dict[str, str]]:
    counter = iter(range(1000))
    main = "".join(_entry(rng, ports, next(counter)) for _ in range(rng.randint(1, 4))) if rng.random() < 0.8 \
        else None
    parts: dict[str, str] = {}
    for name in rng.sample(["10-a.conf", "20-b.conf", "05_c.conf", "x.txt", ".hidden.conf", "b@d.conf"],
                           rng.randint(0, 3)):
        parts[name] = "".join(_entry(rng, ports, next(counter)) for _ in range(rng.randint(1, 3)))
    return main, parts


def _urls(rng: random.Random, http: AuthServer, https: AuthServer) -> list[str]:
    urls = []
    for _ in range(14):
        server = rng.choice([http, https])
        host = rng.choice(["127.0.0.1", "localhost"])
        path = rng.choice(["/a/b/x", "/ab/x", "/a/x", "/b/x", "/x", "/a"])
        urls.append(f"{server.scheme}://{host}:{server.port}{path}")
    return urls


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Tls:
    return make_tls(tmp_path_factory.mktemp("tls"))


@pytest.mark.skipif(not Path(APT_HELPER).exists(), reason="apt-helper (apt) is not installed")
def test_matcher_agrees_with_apt(tls: Tls, tmp_path: Path) -> None:
    rng = random.Random(20261207)
    checked = with_login = 0
    with AuthServer(None) as http, AuthServer(None, tls=tls) as https:
        for case in range(30):
            work = tmp_path / f"case{case}"
            (work / "parts").mkdir(parents=True)
            main, parts = _auth_files(rng, (http.port, https.port))
            if main is not None:
                (work / "auth.conf").write_text(main)
            for name, text in parts.items():
                (work / "parts" / name).write_text(text)
            urls = [f"{u}/__{case}_{i}" for i, u in enumerate(_urls(rng, http, https))]
            before = len(http.requests) + len(https.requests)
            args = [a for i, u in enumerate(urls) for a in (u, str(work / f"out{i}"))]
            proc = subprocess.run(
                [APT_HELPER, "-o", f"Dir::Etc::netrc={work / 'auth.conf'}", "-o", f"Dir::Etc::netrcparts={work}/parts",
                 "-o", f"Acquire::https::CaInfo={tls.ca}", "-o", "APT::Sandbox::User=root",
                 "-o", "Acquire::Retries=0", "download-file", *args],
                capture_output=True, text=True, check=False, timeout=120)
            assert proc.returncode == 0, proc.stderr
            assert len(http.requests) + len(https.requests) - before == len(urls)
            sent = {path: login for path, login in [*http.requests, *https.requests]}
            auth = apt_auth_files(main.encode() if main is not None else None,
                                  {f"{APT_AUTH_DIR}/{n}": t.encode() for n, t in parts.items()})
            for url in urls:
                path = "/" + url.split("/", 3)[3]
                got = auth.login_for(url)
                mine = None if got is None else (got.user, got.password)
                files = f"auth.conf:\n{main}\nparts: {parts}"
                assert mine == sent[path], f"{url}: apt sent {sent[path]}, copa picks {mine}\n{files}"
                checked += 1
                with_login += sent[path] is not None
    assert checked == 30 * 14 and with_login > 60  # the generator must produce matches, not only misses


# --- the user's file, redaction --------------------------------------------------------------------------------------

def test_user_file_errors(tmp_path: Path) -> None:
    with pytest.raises(LocalIOError, match="does not exist"):
        user_auth(RepositoryOptions(auth_file=tmp_path / "missing"))
    bad = tmp_path / "bad"
    bad.write_text("machine example.org\nlogin u\npassword\n")
    with pytest.raises(UsageError, match=rf"{bad}:3: 'password' without a value"):
        user_auth(RepositoryOptions(auth_file=bad))
    bad.write_text('{"auths": {}}\n')
    with pytest.raises(UsageError, match="no 'machine' entry"):
        user_auth(RepositoryOptions(auth_file=bad))
    bad.write_text("login u password p\nmachine example.org\n")
    with pytest.raises(UsageError, match=rf"{bad}:1: 'login' before any 'machine'"):
        user_auth(RepositoryOptions(auth_file=bad))
    assert "secret" not in repr(Login("u", "secret"))


def test_redact() -> None:
    assert redact("https://u:p%40ss@host:8443/debian?x=@y") == "https://host:8443/debian?x=@y"
    assert redact("http://host/p@th") == "http://host/p@th"
    assert redact("file:/srv/mirror") == "file:/srv/mirror"
    assert redact_text("deb [trusted=yes] https://u:pw@h/debian bookworm main, http://x@y/") == \
        "deb [trusted=yes] https://h/debian bookworm main, http://y/"


def test_bad_repository_line_hides_its_password() -> None:
    from copa.pkg.apt.sources import parse_repository_line

    with pytest.raises(UsageError) as bad:
        parse_repository_line(f"deb https://u:{WRONG}@host/debian")
    assert WRONG not in str(bad.value) and "https://host/debian" in str(bad.value)


# --- end to end through the CLI --------------------------------------------------------------------------------------

def copa(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "copa", *args], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "COPA_DEBUG": ""}, check=False, timeout=600)


def error_line(proc: subprocess.CompletedProcess[str]) -> str:
    lines = proc.stderr.strip().splitlines()
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in lines if line.startswith("copa: error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], proc.stderr
    return errors[0]


def patch_layer_bytes(layout: Path, ref: str) -> bytes:
    """Every member name and content of the patch (last) layer, uncompressed, concatenated."""
    index = json.loads((layout / "index.json").read_text())
    desc = next(m for m in index["manifests"] if m["annotations"]["org.opencontainers.image.ref.name"] == ref)
    manifest = json.loads((layout / "blobs" / "sha256" / desc["digest"].split(":")[1]).read_text())
    blob = layout / "blobs" / "sha256" / manifest["layers"][-1]["digest"].split(":")[1]
    out = bytearray()
    with tarfile.open(blob, "r:*") as tar:
        for member in tar:
            out += member.name.encode() + member.linkname.encode()
            f = tar.extractfile(member)
            if f is not None:
                out += f.read()
    return bytes(out)


@pytest.fixture(scope="module")
def repo() -> AptRepo:
    return debimage.hermetic_repo()


@pytest.fixture(scope="module")
def base() -> debimage.BaseImage:
    return debimage.base_image()


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_report(tmp_path_factory.mktemp("report") / "trivy.json", {"app": ("1.0", "2.0")})


@pytest.fixture(scope="module")
def http_mirror(repo: AptRepo) -> Iterator[AuthServer]:
    with AuthServer(repo.root, {USER: PASSWORD}) as server:
        yield server


@pytest.fixture(scope="module")
def https_mirror(repo: AptRepo, tls: Tls) -> Iterator[AuthServer]:
    with AuthServer(repo.root, {USER: PASSWORD}, tls=tls, client_cert=True) as server:
        yield server


def _auth_file(path: Path, machine: str, password: str = PASSWORD) -> Path:
    path.write_text(f"# written by the test\nmachine {machine}\n  login {USER}\n  password {password}\n")
    return path


def _patch(image: str, report: Path, out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return copa("patch", "-i", image, "-r", str(report), "--oci-dir", str(out), "-t", "patched", *extra)


def test_http_mirror_with_auth_file(base: debimage.BaseImage, repo: AptRepo, report: Path,
                                    http_mirror: AuthServer, tmp_path: Path) -> None:
    # An http:// mirror: the entry must name the scheme, as apt requires before it sends a password in clear.
    auth = _auth_file(tmp_path / "auth.conf", f"http://127.0.0.1:{http_mirror.port}/")
    proc = _patch(base.image_ref, report, tmp_path / "out", *debimage.copa_args(http_mirror.url, repo),
                  "--repository-auth", str(auth))
    assert proc.returncode == 0, proc.stderr
    assert PASSWORD not in proc.stdout + proc.stderr
    layer = patch_layer_bytes(tmp_path / "out", "patched")
    assert b"var/lib/dpkg/info/app.list" in layer  # the scan reads the real patch layer
    assert PASSWORD.encode() not in layer and b"written by the test" not in layer
    logins = {login for _path, login in http_mirror.requests}
    assert (USER, PASSWORD) in logins

    # apt, with the same file as its auth.conf, reads the same mirror and finds the fix there; without it, apt fails.
    assert repo.key is not None
    sources = tmp_path / "sources.list"
    sources.write_text(f"deb [signed-by={repo.key.keyring}] {http_mirror.url} {debimage.SUITE} main\n")
    for state, with_auth in ((tmp_path / "apt", True), (tmp_path / "apt-noauth", False)):
        (state / "etc/apt").mkdir(parents=True)
        if with_auth:
            shutil.copy(auth, state / "etc/apt/auth.conf")  # Dir::Etc::netrc under the private Dir
        update = aptoracle.apt(state, base.rootfs, None, "apt-get", "update", image_conf=False, check=False,
                               sources_list=sources)
        assert (update.returncode == 0 and "401" not in update.stderr) == with_auth, update.stderr
    policy = aptoracle.apt(tmp_path / "apt", base.rootfs, None, "apt-cache", "policy", "app", image_conf=False,
                           sources_list=sources)
    assert "Candidate: 2.0" in policy.stdout, policy.stdout


def test_missing_and_wrong_credentials(base: debimage.BaseImage, repo: AptRepo, report: Path,
                                       http_mirror: AuthServer, tmp_path: Path) -> None:
    proc = _patch(base.image_ref, report, tmp_path / "none", *debimage.copa_args(http_mirror.url, repo))
    assert proc.returncode == 4, proc.stderr
    line = error_line(proc)
    assert http_mirror.url in line and "requires credentials" in line and "--repository-auth" in line, line

    # The entry without a scheme does not apply to http: apt would not send it either.
    unencrypted = _auth_file(tmp_path / "https-only.conf", f"127.0.0.1:{http_mirror.port}")
    proc = _patch(base.image_ref, report, tmp_path / "https-only", *debimage.copa_args(http_mirror.url, repo),
                  "--repository-auth", str(unencrypted))
    assert proc.returncode == 4 and "requires credentials" in error_line(proc)

    wrong = _auth_file(tmp_path / "wrong.conf", f"http://127.0.0.1:{http_mirror.port}", WRONG)
    proc = _patch(base.image_ref, report, tmp_path / "wrong", *debimage.copa_args(http_mirror.url, repo),
                  "--repository-auth", str(wrong))
    assert proc.returncode == 4
    line = error_line(proc)
    assert "refused the credentials" in line and http_mirror.url in line, line
    assert WRONG not in proc.stdout + proc.stderr

    # Credentials in the repository URL itself (apt's syntax) are used, and never shown.
    in_url = f"http://{USER}:{WRONG}@127.0.0.1:{http_mirror.port}"
    proc = _patch(base.image_ref, report, tmp_path / "in-url", *debimage.copa_args(in_url, repo))
    assert proc.returncode == 4 and "refused the credentials" in error_line(proc)
    assert WRONG not in proc.stdout + proc.stderr
    for out in ("none", "https-only", "wrong", "in-url"):
        assert not (tmp_path / out / "index.json").exists()


def test_bad_auth_file_flags(base: debimage.BaseImage, repo: AptRepo, report: Path, http_mirror: AuthServer,
                             tmp_path: Path) -> None:
    proc = _patch(base.image_ref, report, tmp_path / "o1", *debimage.copa_args(http_mirror.url, repo),
                  "--repository-auth", str(tmp_path / "nope.conf"))
    assert proc.returncode == 8 and "nope.conf does not exist" in error_line(proc)
    bad = tmp_path / "bad.conf"
    bad.write_text(f"machine http://127.0.0.1:{http_mirror.port} login {USER} password\n")
    proc = _patch(base.image_ref, report, tmp_path / "o2", *debimage.copa_args(http_mirror.url, repo),
                  "--repository-auth", str(bad))
    assert proc.returncode == 2 and f"{bad}:1" in error_line(proc)


def test_https_mirror_with_client_certificate(base: debimage.BaseImage, repo: AptRepo, report: Path,
                                              https_mirror: AuthServer, tls: Tls, tmp_path: Path) -> None:
    auth = _auth_file(tmp_path / "auth.conf", f"127.0.0.1:{https_mirror.port}")  # https: no scheme needed
    common = [*debimage.copa_args(https_mirror.url, repo), "--ca-bundle", str(tls.ca), "--repository-auth",
              str(auth)]
    proc = _patch(base.image_ref, report, tmp_path / "out", *common, "--repository-cert", str(tls.client_cert),
                  "--repository-key", str(tls.client_key))
    assert proc.returncode == 0, proc.stderr
    layer = patch_layer_bytes(tmp_path / "out", "patched")
    assert PASSWORD.encode() not in layer
    assert tls.client_key.read_bytes() not in layer

    proc = _patch(base.image_ref, report, tmp_path / "nocert", *common, "--timeout", "10")
    assert proc.returncode == 4, proc.stderr
    line = error_line(proc)
    assert https_mirror.url in line and "--repository-cert" in line, line
    assert not (tmp_path / "nocert" / "index.json").exists()


def test_image_auth_conf(base: debimage.BaseImage, repo: AptRepo, report: Path, http_mirror: AuthServer,
                         tmp_path: Path) -> None:
    """An image whose /etc/apt/auth.conf.d holds the login for its (http) source is patched with no flag."""
    rootfs = debimage.copy_rootfs(base.rootfs, tmp_path / "rootfs")
    (rootfs / "etc/apt/sources.list.d/copa-test.list").write_text(f"deb {http_mirror.url} {debimage.SUITE} main\n")
    (rootfs / "etc/apt/auth.conf.d").mkdir(parents=True, exist_ok=True)
    _auth_file(rootfs / "etc/apt/auth.conf.d/mirror.conf", f"http://127.0.0.1:{http_mirror.port}")
    _auth_file(rootfs / "etc/apt/auth.conf.d/ignored.txt", f"http://127.0.0.1:{http_mirror.port}", WRONG)
    images.builder.make_oci_layout(rootfs, tmp_path / "layout", "auth", cmd=None)
    shutil.rmtree(rootfs)
    assert repo.key is not None
    proc = _patch(f"oci:{tmp_path / 'layout'}:auth", report, tmp_path / "out", "--keyring", str(repo.key.keyring))
    assert proc.returncode == 0, proc.stderr
    layer = patch_layer_bytes(tmp_path / "out", "patched")
    assert b"var/lib/dpkg/info/app.list" in layer and PASSWORD.encode() not in layer


# --- rpm: the image's .repo username/password and ssl client files -------------------------------------------------

RPM_OS_RELEASE = 'NAME="Red Hat Enterprise Linux"\nID="rhel"\nID_LIKE="fedora"\nVERSION_ID="9.4"\n' \
                 'PRETTY_NAME="Red Hat Enterprise Linux 9.4 (Plow)"\n'


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("rpmbuild") is None or shutil.which("dnf") is None, reason="needs rpm tools, dnf")
def test_rpm_repo_credentials_and_client_certificate(tls: Tls, tmp_path: Path) -> None:
    """An rpm image whose dnf.conf [main] sets username/password (every repository inherits them, as in libdnf)
    and whose .repo names the entitlement-style client certificate, key and CA inside the image; the mirror
    demands both. dnf, given the same settings, is the oracle that the mirror serves the fix to them."""
    from tests.support.rpmrepo import createrepo, dnf_query
    from tests.support.rpmtools import build_rpm, init_root, rpm_spec

    old = build_rpm(rpm_spec("libbar", "1.0", files={"/usr/share/bar/v": "1.0\n"}), tmp_path / "old")
    repo = tmp_path / "repo"
    build_rpm(rpm_spec("libbar", "1.1", files={"/usr/share/bar/v": "1.1\n"}), repo)
    createrepo(repo)
    root = tmp_path / "root"
    init_root(root, [old])
    (root / "etc/dnf").mkdir(parents=True)
    (root / "etc/os-release").write_text(RPM_OS_RELEASE)
    (root / "etc/dnf/dnf.conf").write_text(f"[main]\ngpgcheck=1\nusername={USER}\npassword={PASSWORD}\n")
    (root / "etc/pki/entitlement").mkdir(parents=True)
    shutil.copy(tls.client_cert, root / "etc/pki/entitlement/42.pem")
    shutil.copy(tls.client_key, root / "etc/pki/entitlement/42-key.pem")
    (root / "etc/rhsm/ca").mkdir(parents=True)
    shutil.copy(tls.ca, root / "etc/rhsm/ca/test-uep.pem")
    report = write_report(tmp_path / "trivy.json", {"libbar": ("1.0-1", "1.1-1")}, os_version="9.4",
                          family="redhat")
    with AuthServer(repo, {USER: PASSWORD}, tls=tls, client_cert=True) as server:
        (root / "etc/yum.repos.d").mkdir(parents=True)
        (root / "etc/yum.repos.d/redhat.repo").write_text(
            f"[entitled]\nname=entitled\nbaseurl={server.url}/\ngpgcheck=0\n"
            "sslclientcert=/etc/pki/entitlement/42.pem\nsslclientkey=/etc/pki/entitlement/42-key.pem\n"
            "sslcacert=/etc/rhsm/ca/test-uep.pem\n")
        images.builder.make_oci_layout(root, tmp_path / "layout", "rpm", cmd=None)
        seen = dnf_query(f"{server.url}/", tmp_path / "dnf", "--qf", "%{name}-%{version}", setopts=(
            f"t.username={USER}", f"t.password={PASSWORD}", f"t.sslclientcert={tls.client_cert}",
            f"t.sslclientkey={tls.client_key}", f"t.sslcacert={tls.ca}"))
        assert seen == ["libbar-1.1"]
        proc = _patch(f"oci:{tmp_path / 'layout'}:rpm", report, tmp_path / "out")
        assert proc.returncode == 0, proc.stderr
        assert (USER, PASSWORD) in {login for _path, login in server.requests}
    layer = patch_layer_bytes(tmp_path / "out", "patched")
    assert b"usr/share/bar/v" in layer and PASSWORD.encode() not in layer
    assert tls.client_key.read_bytes() not in layer


# --- apk: a login in the repositories line ---------------------------------------------------------------------------

def test_apk_url_login(tmp_path: Path) -> None:
    """/etc/apk/repositories naming https://user:pass@host/... (apk-tools sends it as Basic auth): the login is
    taken out of the URLs copa carries and sent, per request, to that repository only; never shown."""
    from types import SimpleNamespace

    from copa.errors import RegistryError
    from copa.pkg.apk.repos import apk_fetcher, select_repositories

    served = tmp_path / "alpine"
    (served / "v3.20/main/x86_64").mkdir(parents=True)
    (served / "v3.20/main/x86_64/APKINDEX.tar.gz").write_bytes(b"index bytes")
    with AuthServer(served, {USER: PASSWORD}) as server:
        def ctx(password: str) -> SimpleNamespace:
            lines = f"{server.url.replace('://', f'://{USER}:{password}@')}/v3.20/main\n{server.url}/other\n"
            root = SimpleNamespace(read=lambda p: lines.encode() if p == "etc/apk/repositories" else None,
                                   under=lambda p: {})
            return SimpleNamespace(repos=RepositoryOptions(), root=root, cache_dir=tmp_path / "cache",
                                   timeout=10.0, ca_bundle=None)

        good = ctx(PASSWORD)
        repos = select_repositories(good, "x86_64", set())  # type: ignore[arg-type]
        assert [r.index_url for r in repos] == [f"{server.url}/v3.20/main/x86_64/APKINDEX.tar.gz",
                                                f"{server.url}/other/x86_64/APKINDEX.tar.gz"]
        assert PASSWORD not in repr(repos)
        fetcher = apk_fetcher(good, repos)  # type: ignore[arg-type]
        assert fetcher.get_bytes(repos[0].index_url, "apk index") == b"index bytes"
        with pytest.raises(RegistryError, match="requires credentials"):  # the other repository gets no login
            fetcher.get_bytes(repos[1].index_url, "apk index")
        assert [login for _path, login in server.requests] == [(USER, PASSWORD), None]

        bad = ctx(WRONG)
        bad_repos = select_repositories(bad, "x86_64", set())  # type: ignore[arg-type]
        with pytest.raises(RegistryError) as refused:
            apk_fetcher(bad, bad_repos).get_bytes(bad_repos[0].index_url, "apk index")  # type: ignore[arg-type]
        assert "refused the credentials" in str(refused.value) and WRONG not in str(refused.value)


# --- redirects -------------------------------------------------------------------------------------------------------

@pytest.mark.skipif(not Path(APT_HELPER).exists(), reason="apt-helper (apt) is not installed")
def test_redirect_gets_its_own_login(tmp_path: Path) -> None:
    """A mirror redirecting to another host: the login of the first host is not sent there; the target gets the
    one auth.conf names for it, or none. apt-helper, given the same file, sends the same."""
    from copa.pkg.fetch import Fetcher

    with AuthServer(None) as target, AuthServer(None, redirect_to=f"http://localhost:{target.port}") as origin:
        for case, extra in (("none", ""), ("own", f"machine http://localhost:{target.port} login t password tp\n")):
            auth_conf = tmp_path / f"{case}.conf"
            auth_conf.write_text(f"machine http://127.0.0.1:{origin.port} login {USER} password {PASSWORD}\n{extra}")
            apt_path, copa_path = f"/{case}/apt", f"/{case}/copa"
            subprocess.run([APT_HELPER, "-o", f"Dir::Etc::netrc={auth_conf}", "-o", "Dir::Etc::netrcparts=/nonexistent",
                            "-o", "APT::Sandbox::User=root", "download-file", f"{origin.url}{apt_path}",
                            str(tmp_path / f"{case}.out")], capture_output=True, check=True, timeout=60)
            fetcher = Fetcher(timeout=10, auth=RepoAuth((NetrcFile.parse(auth_conf.read_text(), "auth.conf"),)))
            assert fetcher.get_bytes(f"{origin.url}{copa_path}", "test") == b"ok\n"
            at_origin = dict(origin.requests)
            at_target = dict(target.requests)
            assert at_origin[apt_path] == at_origin[copa_path] == (USER, PASSWORD)
            assert at_target[apt_path] == at_target[copa_path] == (None if case == "none" else ("t", "tp"))


def test_prefix_login_boundaries() -> None:
    """A repository's login (dnf's username, a URL's user:pass@) covers the URLs under it, by whole segments."""
    from copa.pkg.repoauth import PrefixLogin

    login = Login("u", "p")
    auth = RepoAuth((PrefixLogin("https://[::1]:8443/repo", login), PrefixLogin("http://h/a/", Login("v", "q"))))
    assert auth.login_for("https://[::1]:8443/repo/repodata/repomd.xml") == login
    assert auth.login_for("https://[::1]:8443/repository/x") is None
    assert auth.login_for("https://[::1]:8444/repo/x") is None
    assert auth.login_for("http://h/a/b") == Login("v", "q")
    assert auth.login_for("https://h/a/b") is None
