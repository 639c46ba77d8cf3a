"""Repository configuration (copa/pkg/rpm/repos.py) against dnf 4's own reading of the same files.

The oracle is dnf itself on an installroot holding the image's /etc: `dnf --installroot R repolist --all` for
which repositories exist and their names, and dnf's Python API (the reader the CLI uses, set up as the CLI sets
it up for --installroot) for every option's value.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from copa.errors import IntegrityError, LocalIOError, UsageError
from copa.pkg.base import OSRelease, RepositoryOptions
from copa.pkg.rpm.repos import RpmRepository, Tree, expand, read_setup, releasever_for, repository_keyring
from tests.support.aptrepo import RepoServer

pytestmark = pytest.mark.skipif(shutil.which("dnf") is None, reason="dnf is the oracle")

ROCKY = OSRelease.parse('ID="rocky"\nID_LIKE="rhel centos fedora"\nVERSION_ID="9.3"\n')

# dnf's reader, as `dnf --installroot R` sets it up (config file and reposdir from the root, vars from its
# varsdirs), printing each repository's options as JSON.
_DUMP = r"""
import json, os, sys, dnf
root, releasever, basearch = sys.argv[1:4]
base = dnf.Base()
conf = base.conf
conf.installroot = root
path = os.path.join(root, "etc/dnf/dnf.conf")
if os.path.exists(path):
    conf.config_file_path = path
conf.read(priority=dnf.conf.PRIO_MAINCONFIG)
conf.releasever = releasever
conf.substitutions["basearch"] = basearch
conf.substitutions["arch"] = basearch
conf.substitutions.update_from_etc(root, varsdir=conf._get_value("varsdir"))
conf.reposdir = [root + d for d in conf.reposdir if os.path.isdir(root + d)]
base.read_all_repos()
def plain(v):
    if v is None or isinstance(v, (str, int, bool)):
        return v
    return list(v)
keys = ("name", "baseurl", "mirrorlist", "metalink", "enabled", "gpgcheck", "repo_gpgcheck", "gpgkey", "priority",
        "cost", "excludepkgs", "includepkgs", "module_hotfixes", "sslverify", "skip_if_unavailable")
main = {k: plain(getattr(conf, k)) for k in ("gpgcheck", "repo_gpgcheck", "excludepkgs", "includepkgs",
                                             "installonlypkgs", "best", "skip_if_unavailable")}
repos = {r.id: {k: plain(getattr(r, k)) for k in keys} for r in base.repos.all()}
print(json.dumps({"main": main, "repos": repos}))
"""


def _dnf_config(root: Path, releasever: str = "9", basearch: str = "x86_64") -> dict[str, dict[str, object]]:
    out = subprocess.run(["/usr/bin/python3", "-c", _DUMP, str(root), releasever, basearch], check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out)  # type: ignore[no-any-return]


def _dnf_repolist(root: Path, work: Path) -> dict[str, tuple[str, str]]:
    """repo id -> (name, enabled/disabled) as `dnf repolist --all` prints it (no metadata is fetched)."""
    out = subprocess.run(["dnf", "--installroot", str(root), "--releasever", "9", "--disableplugin=*",
                          f"--setopt=cachedir={work}", "repolist", "--all"],
                         check=True, capture_output=True, text=True).stdout
    rows = {}
    for line in out.splitlines()[1:]:
        parts = line.split()
        if len(parts) >= 3:
            rows[parts[0]] = (" ".join(parts[1:-1]), parts[-1])
    return rows


def _write(root: Path, files: dict[str, str]) -> Tree:
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)

    def under(prefix: str) -> dict[str, bytes]:
        d = root / prefix
        return {str(f.relative_to(root)): f.read_bytes() for f in sorted(d.rglob("*")) if f.is_file()} \
            if d.is_dir() else {}

    return Tree(lambda p: (root / p).read_bytes() if (root / p).is_file() else None, under)


IMAGE = {
    "etc/dnf/dnf.conf": "[main]\ngpgcheck=1\nexclude=kernel*\nexcludepkgs=foo, bar\ninstallonlypkgs=mykernel\n"
                        "best=True\nskip_if_unavailable=False\n",
    "etc/dnf/vars/contentdir": "pub\n",
    "etc/dnf/vars/stream": "9-stream\nsecond line ignored\n",
    "etc/yum/vars/stream": "overridden by /etc/dnf/vars\n",
    "etc/yum/vars/infra": "container",
    "etc/yum.repos.d/rocky.repo": (
        "# comment\n; another\n"
        "[baseos]\nname=Rocky Linux $releasever - BaseOS\n"
        "baseurl=http://mirror.example.invalid/$contentdir/$releasever/BaseOS/$basearch/os/\n"
        "  http://m2.example.invalid/${contentdir}/$stream/$arch/, http://m3.example.invalid/$undefined/$infra\n"
        "gpgkey=file:///etc/pki/rpm-gpg/RPM-GPG-KEY-Rocky-9 http://keys.example.invalid/k.asc\n"
        "gpgcheck=1\nenabled=1\ncountme=1\nexcludepkgs=bar, baz*\nexclude=qux\ncost=500\npriority=10\n"
        "\n[appstream]\nname=AppStream\n"
        "mirrorlist=https://mirrors.example.invalid/mirrorlist?arch=$basearch&repo=AppStream-$releasever\n"
        "enabled=0\n"
        "\n[extras]\nname = spaced name  \nmetalink=https://mirrors.example.invalid/metalink?repo=extras-$releasever\n"
        "module_hotfixes=true\nrepo_gpgcheck=On\ngpgcheck=no\nsslverify=0\nincludepkgs=a*\nincludepkgs=b*\n"
        "\n[bad-values]\nbaseurl=http://bad.example.invalid/\nenabled=1 # no inline comments\ngpgcheck=maybe\n"
        "priority=high\nexclude=x\nexclude=\nexcludepkgs=y\n"
        "\n[main]\nbaseurl=http://ignored.example.invalid/\n"
    ),
    "etc/yum.repos.d/zz-dup.repo": "[baseos]\nname=Duplicate\nbaseurl=http://dup.example.invalid/\n"
                                   "[no-url]\nname=no url\n",
    "etc/yum.repos.d/colon.repo": "[colon]\nbaseurl: http://colon.example.invalid/\n",  # dnf skips the file
    "etc/yum.repos.d/stray.repo": "stray=1\n[stray]\nbaseurl=http://stray.example.invalid/\n",  # and this one
    "etc/yum.repos.d/bad id.repo": "[bad id]\nbaseurl=http://x.example.invalid/\n",
    "etc/yum.repos.d/not-a-repo.conf": "[ignored]\nbaseurl=http://conf.example.invalid/\n",
}


def test_image_repositories_as_dnf_reads_them(tmp_path: Path) -> None:
    root = tmp_path / "root"
    tree = _write(root, IMAGE)
    setup = read_setup(tree, ROCKY, "amd64", "", RepositoryOptions())
    oracle = _dnf_config(root, releasever_for(ROCKY), "x86_64")
    listed = _dnf_repolist(root, tmp_path / "cache")
    enabled = {rid for rid, (_, state) in listed.items() if state == "enabled"}
    # "no-url" is enabled for dnf, which then fails to load it; copa drops it at once, with a warning.
    assert {r.id for r in setup.repos} == enabled - {"no-url"}
    assert [r.id for r in setup.repos] == ["baseos", "extras", "bad-values"]  # file order
    assert any("no-url" in w for w in setup.warnings)
    for repo in setup.repos:
        want = oracle["repos"][repo.id]
        assert isinstance(want, dict)
        assert listed[repo.id][0] == repo.name == want["name"]
        got = {
            "name": repo.name, "baseurl": list(repo.baseurls), "mirrorlist": repo.mirrorlist or None,
            "metalink": repo.metalink or None, "enabled": True, "gpgcheck": repo.gpgcheck,
            "repo_gpgcheck": repo.repo_gpgcheck, "gpgkey": list(repo.gpgkeys), "priority": repo.priority,
            "cost": repo.cost, "excludepkgs": list(repo.excludepkgs), "includepkgs": list(repo.includepkgs),
            "module_hotfixes": repo.module_hotfixes, "sslverify": repo.sslverify,
            "skip_if_unavailable": repo.skip_if_unavailable,
        }
        want = dict(want, baseurl=[u.rstrip("/") for u in want["baseurl"]])  # type: ignore[union-attr]
        assert got == want, repo.id
    main = oracle["main"]
    assert setup.main.gpgcheck == main["gpgcheck"] and setup.main.best == main["best"]
    assert list(setup.main.excludepkgs) == main["excludepkgs"]
    assert list(setup.main.includepkgs) == main["includepkgs"]
    assert list(setup.main.installonlypkgs) == main["installonlypkgs"]
    baseos = next(r for r in setup.repos if r.id == "baseos")
    assert baseos.baseurls[1] == "http://m2.example.invalid/pub/9-stream/x86_64"


def test_reposdir_and_yum_conf(tmp_path: Path) -> None:
    root = tmp_path / "root"
    tree = _write(root, {
        "etc/dnf/dnf.conf": "[main]\nreposdir=/etc/custom.d\ngpgcheck=0\nrepo_gpgcheck=1\n",
        "etc/custom.d/a.repo": "[a]\nbaseurl=http://a.example.invalid/\n",
        "etc/yum.repos.d/b.repo": "[b]\nbaseurl=http://b.example.invalid/\n",
    })
    setup = read_setup(tree, ROCKY, "arm64", "", RepositoryOptions())
    oracle = _dnf_config(root, "9", "aarch64")
    assert [r.id for r in setup.repos] == sorted(oracle["repos"]) == ["a"]
    a = setup.repos[0]
    assert (a.gpgcheck, a.repo_gpgcheck) == (False, True) == (oracle["repos"]["a"]["gpgcheck"],  # type: ignore[index]
                                                              oracle["repos"]["a"]["repo_gpgcheck"])  # type: ignore[index]
    assert setup.variables["basearch"] == "aarch64"
    # yum images (Amazon Linux 2, CentOS 7): yum.conf, and yum's reposdirs
    tree = _write(tmp_path / "yum", {"etc/yum.conf": "[main]\ngpgcheck=1\nexclude=kernel\n",
                                     "etc/yum.repos.d/amzn2.repo": "[amzn2-core]\nbaseurl=http://a.example.invalid/"
                                                                   "$releasever/$basearch\n"})
    amzn = OSRelease.parse('ID="amzn"\nVERSION_ID="2"\n')
    setup = read_setup(tree, amzn, "amd64", "", RepositoryOptions())
    assert setup.main.excludepkgs == ("kernel",) and setup.main.gpgcheck
    assert setup.repos[0].baseurls == ("http://a.example.invalid/2/x86_64",)
    # yum 3's variables: $name only, looked up lowercased
    tree = _write(tmp_path / "yum2", {"etc/yum.conf": "[main]\n", "etc/yum/vars/awsregion": "default\n",
                                      "etc/yum.repos.d/a.repo": "[a]\nbaseurl=http://$awsregion.example.invalid/"
                                                                "$BASEARCH/${basearch}/$releasever\n"})
    setup = read_setup(tree, amzn, "amd64", "", RepositoryOptions())
    assert setup.repos[0].baseurls == ("http://default.example.invalid/x86_64/${basearch}/2",)


def test_variables() -> None:
    v = {"a": "1", "b": "$a", "basearch": "x86_64"}
    assert expand("$a/${a}/$b/$$a/${a:-x}/$undefined/\\$basearch/$basearchx/${a", v) == \
        "1/1/$a/$1/${a:-x}/$undefined/\\x86_64/$basearchx/${a"
    assert releasever_for(ROCKY) == "9"
    assert releasever_for(OSRelease.parse('ID="amzn"\nVERSION_ID="2023"\n')) == "2023"
    assert releasever_for(OSRelease.parse('ID="fedora"\nVERSION_ID=39\n')) == "39"
    assert releasever_for(OSRelease.parse('ID="ol"\nVERSION_ID="8.9"\n')) == "8"
    assert releasever_for(ROCKY, provided="9.3") == "9.3"


def test_vars_file_overrides_releasever(tmp_path: Path) -> None:
    tree = _write(tmp_path, {"etc/dnf/vars/releasever": "2023.6.20241010\n",
                             "etc/yum.repos.d/al.repo": "[al]\nbaseurl=http://x.example.invalid/$releasever/"
                                                        "$releasever_major/$releasever_minor\n"})
    setup = read_setup(tree, OSRelease.parse('ID="amzn"\nVERSION_ID="2023"\n'), "amd64", "", RepositoryOptions())
    assert setup.repos[0].baseurls == ("http://x.example.invalid/2023.6.20241010/2023/6.20241010",)


def test_user_repositories_mirrors_and_unsigned(tmp_path: Path) -> None:
    tree = _write(tmp_path / "root", IMAGE)
    repo_file = tmp_path / "mine.repo"
    repo_file.write_text("[mine]\nbaseurl=https://mirror.example.invalid/$basearch/\ngpgcheck=1\n"
                         "[off]\nbaseurl=http://off.example.invalid/\nenabled=0\n")
    options = RepositoryOptions(repositories=("http://127.0.0.1:9/repo/$basearch",), repositories_file=repo_file,
                                mirrors=(("https://mirror.example.invalid", "http://127.0.0.1:8/m"),))
    setup = read_setup(tree, ROCKY, "amd64", "", options)
    assert setup.from_user
    assert [(r.id, r.baseurls) for r in setup.repos] == [
        ("copa-repository-1", ("http://127.0.0.1:9/repo/x86_64",)),
        ("mine", ("http://127.0.0.1:8/m/x86_64",)),
    ]
    assert setup.repos[1].original_urls == ("https://mirror.example.invalid/x86_64",)
    assert all(r.gpgcheck for r in setup.repos)
    unsigned = read_setup(tree, ROCKY, "amd64", "", RepositoryOptions(allow_unsigned=True))
    assert not any(r.gpgcheck or r.repo_gpgcheck for r in unsigned.repos)
    off_only = tmp_path / "off.repo"
    off_only.write_text("[off]\nbaseurl=http://off.example.invalid/\nenabled=0\n")
    nothing = read_setup(tree, ROCKY, "amd64", "", RepositoryOptions(repositories_file=off_only))
    assert nothing.from_user and nothing.repos == ()  # not the image's repositories behind the user's back
    with pytest.raises(UsageError):
        read_setup(tree, ROCKY, "amd64", "", RepositoryOptions(repositories=("ftp://x.example.invalid/",)))
    with pytest.raises(LocalIOError):
        read_setup(tree, ROCKY, "amd64", "", RepositoryOptions(repositories_file=tmp_path / "missing.repo"))


def test_keys(tmp_path: Path) -> None:
    from tests.support.rpmtools import make_gpg_key

    key = make_gpg_key(tmp_path / "gpg")
    other = make_gpg_key(tmp_path / "gpg2", uid="other <o@example.invalid>")
    served = tmp_path / "served"
    served.mkdir()
    (served / "k.asc").write_bytes(other.public.read_bytes())
    tree = _write(tmp_path / "root", {"etc/pki/rpm-gpg/RPM-GPG-KEY-test": key.public.read_text()})
    from copa.pkg.fetch import Fetcher

    with RepoServer(served) as server:
        repo = RpmRepository("r", "r", ("http://127.0.0.1:9/",),
                             gpgkeys=("file:///etc/pki/rpm-gpg/RPM-GPG-KEY-test", f"{server.url}/k.asc"))
        ring = repository_keyring(repo, tree, RepositoryOptions(), Fetcher())
        assert sorted(ring.fingerprints) == sorted([key.fingerprint.lower(), other.fingerprint.lower()])
    # file: keys are the image's, never the host's; a missing one is an integrity failure (exit 5)
    escaping = RpmRepository("r", "r", ("http://127.0.0.1:9/",), gpgkeys=(f"file://{key.public}",))
    with pytest.raises(IntegrityError) as e:
        repository_keyring(escaping, tree, RepositoryOptions(), None)
    assert e.value.exit_code == 5
    dotdot = RpmRepository("r", "r", ("http://127.0.0.1:9/",),
                           gpgkeys=("file:///../../etc/pki/rpm-gpg/RPM-GPG-KEY-test",))
    assert repository_keyring(dotdot, tree, RepositoryOptions(), None).fingerprints == (key.fingerprint.lower(),)
    # --keyring replaces the image's keys; a user --repository without --keyring trusts /etc/pki/rpm-gpg
    user = RpmRepository("copa-repository-1", "u", ("http://127.0.0.1:9/",), from_user=True)
    assert repository_keyring(user, tree, RepositoryOptions(), None).fingerprints == (key.fingerprint.lower(),)
    replaced = repository_keyring(escaping, tree, RepositoryOptions(keyrings=(other.public,)), None)
    assert replaced.fingerprints == (other.fingerprint.lower(),)


def test_visible_excludes() -> None:
    from copa.pkg.rpm.repos import MainConfig, RepoSetup

    repo = RpmRepository("r", "r", ("http://x.example.invalid",), excludepkgs=("foo*",), includepkgs=())
    setup = RepoSetup(MainConfig(excludepkgs=("kernel-5.14*",), includepkgs=()), (repo,))
    assert not setup.visible(repo, "foobar")
    assert not setup.visible(repo, "kernel", ("0", "5.14.0", "70.el9"), "x86_64")
    assert setup.visible(repo, "kernel", ("0", "6.1", "1"), "x86_64")
    only = RpmRepository("o", "o", ("http://x.example.invalid",), includepkgs=("bash", "glibc*"))
    assert setup.visible(only, "glibc-common") and not setup.visible(only, "zsh")


def test_detect_releasever_as_dnf() -> None:
    from copa.pkg.rpm.deps import Dep
    from copa.pkg.rpm.repos import detect_releasever

    rocky = ("rocky-release", "9.3", [Dep("rocky-release", 8, "9.3-1.2.el9"),
                                      Dep("system-release(releasever)", 8, "9")])
    al2023 = ("system-release", "2023.6.20241010", [Dep("system-release(releasever)", 8, "2023.6.20241010")])
    bare = ("redhat-release", "8.9", [Dep("redhat-release", 8, "8.9-0.1.el8")])
    assert detect_releasever([("bash", "5.1", [Dep("bash", 8, "5.1")]), rocky]) == "9"
    assert detect_releasever([al2023]) == "2023.6.20241010"
    assert detect_releasever([bare]) == "8.9"  # provides itself: the package's version
    assert detect_releasever([("x", "1", [Dep("system-release(releasever)")])]) == "1"
    assert detect_releasever([("bash", "5.1", [])]) is None


@pytest.mark.parametrize(("name", "version", "provides"), [
    ("rocky-release", "9.3", ("system-release(releasever) = 9", "system-release = 9.3-1.el9")),
    ("system-release", "2023.6.20241010", ("system-release(releasever) = 2023.6.20241010",)),
    ("redhat-release", "8.9", ()),  # found by its own name: the package's version
    ("centos-release", "7", ("system-release(releasever) >= 7",)),  # not '=': the package's version
])
def test_detect_releasever_against_dnf(name: str, version: str, provides: tuple[str, ...], tmp_path: Path) -> None:
    """dnf.rpm.detect_releasever on an rpm --root database of the same package is the oracle."""
    from copa.pkg.rpm.deps import Dep
    from copa.pkg.rpm.repos import detect_releasever
    from tests.support.rpmtools import build_rpm, init_root, rpm_spec

    rpm = build_rpm(rpm_spec(name, version, lines=tuple(f"Provides: {p}" for p in provides)), tmp_path)
    init_root(tmp_path / "root", [rpm])
    # Debian's rpm keeps its database elsewhere by default; the image's is at /var/lib/rpm
    script = ("import sys, rpm, dnf.rpm; rpm.addMacro('_dbpath', '/var/lib/rpm'); "
              "print(dnf.rpm.detect_releasever(sys.argv[1]))")
    theirs = subprocess.run(["/usr/bin/python3", "-c", script, str(tmp_path / "root")],
                            check=True, capture_output=True, text=True).stdout.strip()
    # rpm adds the package's own `name = version-release` provide
    deps = [Dep.parse(p) for p in provides] + [Dep(name, 8, f"{version}-1")]
    assert detect_releasever([(name, version, deps)]) == theirs
