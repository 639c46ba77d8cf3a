"""What RHEL packages' scriptlets and triggers change, reproduced by copa/pkg/effects for the rpm family and
compared with the real tools run on a copy of the same root:

- update-ca-trust's pem/tls-ca-bundle.pem against `p11-kit extract --format=pem-bundle --filter=ca-anchors
  --comment --purpose server-auth`, p11-kit's trust module pointed at the root's two source directories (a module
  config in a user's ~/.config/pkcs11: p11-kit reads user configuration only when not run as root, so it runs as
  nobody);
- ldconfig after a library package's upgrade (the package's `%post -p /sbin/ldconfig`) against `ldconfig -r`
  given RHEL's search order (its ld.so.conf, then /lib, /lib64, /usr/lib, /usr/lib64);
- a %pre's guarded groupadd -r / useradd -r (with RHEL's login.defs, SYS_UID_MIN 201) against bookworm's shadow
  `groupadd/useradd --root` running the same script (same id choice; Red Hat's shadow-utils writes "!!" where
  Debian's writes "!" for a locked account: that one difference is applied to the oracle's /etc/shadow).
The upgrade itself is copa's install.py (what the adapter's build() runs), then effects.apply as build() calls it."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from copa.oci.layer import Entry
from copa.pkg.effects import apply, catrust, note, reproduce
from copa.pkg.effects.merged import Merged
from copa.pkg.rpm.header import Header
from copa.pkg.rpm.install import LayerPlan, effects_package, install_package
from copa.pkg.rpm.rpmdb.installed import read_database
from copa.pkg.rpm.rpmfile import read_rpm
from tests.support import debimage, images, rootview
from tests.support.aptrepo import RepoServer
from tests.support.rpmrepo import createrepo
from tests.support.rpmtools import RpmFile, RpmSpec, build_rpm, init_root, make_gpg_key, rpm_root_args, sign_rpms
from tests.support.trivy import write_report

pytestmark = pytest.mark.skipif(shutil.which("rpmbuild") is None, reason="needs rpm tools")
CAPTURE = ("etc", "usr/share/pki", "var/lib/rpm")
MTIME = 1704067200


def _patch(root: Path, new_rpm: Path, stage: Path) -> tuple[list[Entry], str]:
    """copa's upgrade of the one installed package by `new_rpm`, effects included: (entries, the package's note)."""
    view = rootview.view_of(root, CAPTURE)
    headers = read_database(view).headers
    old = Header.parse(next(iter(headers.values())), "old") if headers else None
    contents = read_rpm(new_rpm, stage)
    layer = LayerPlan.of(view, MTIME)
    install_package(layer, contents, old, set())
    outcome = apply(layer.entries, view, [effects_package(contents, old)], "rpm", "amd64", MTIME)
    return list(layer.entries.values()), note(outcome, contents.header.string(1000) or "")


# ---------------------------------------------------------------------------------------------------- CA trust

def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _make_cert(d: Path, name: str, subject: str, *ext: str, key: str = "") -> bytes:
    new_key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", f"{name}.key"]
    args = ["req", "-x509", *(["-key", key] if key else new_key), "-out", f"{name}.pem", "-days", "3650",
            "-subj", subject]
    for e in ext:
        args += ["-addext", e]
    _openssl(*args, cwd=d)
    return (d / f"{name}.pem").read_bytes()


def _der(pem: bytes) -> bytes:
    body = b"".join(line for line in pem.splitlines() if not line.startswith(b"-----"))
    return base64.b64decode(body)


def _spki_pem(d: Path, name: str) -> str:
    out = subprocess.run(["openssl", "x509", "-in", f"{name}.pem", "-pubkey", "-noout"], cwd=d, check=True,
                         capture_output=True, text=True).stdout
    return out


def _persist_value(der: bytes) -> str:
    return "".join(f"%{b:02x}" for b in der)


def _eku_extension(*oids: bytes) -> bytes:
    """Extension { extnID extendedKeyUsage, extnValue OCTET STRING (SEQUENCE OF OID) } in DER (short forms)."""
    seq = b"".join(b"\x06" + bytes([len(o)]) + o for o in oids)
    value = b"\x30" + bytes([len(seq)]) + seq
    body = b"\x06\x03\x55\x1d\x25" + b"\x04" + bytes([len(value)]) + value
    return b"\x30" + bytes([len(body)]) + body


EMAIL = bytes.fromhex("2b06010505070304")
SERVER = bytes.fromhex("2b06010505070301")


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    d = tmp_path_factory.mktemp("certs")
    ca = ("basicConstraints=critical,CA:TRUE", "keyUsage=critical,keyCertSign,cRLSign")
    return {
        "local": _make_cert(d, "local", "/O=Local Org/OU=Local Unit/CN=Local Root CA", *ca),
        "ou-only": _make_cert(d, "ou-only", "/O=Org Only/OU=Unit Only Root", *ca),
        "bundle-a": _make_cert(d, "bundle-a", "/C=US/O=Bundle A/CN=Bundle A Root", *ca),
        "email": _make_cert(d, "email", "/CN=Email Only Root", *ca),
        "distrusted": _make_cert(d, "distrusted", "/CN=Distrusted Root", *ca),
        "blocked": _make_cert(d, "blocked", "/CN=Blocked In Etc", *ca),
        "leaf": _make_cert(d, "leaf", "/CN=not a ca", "basicConstraints=critical,CA:FALSE"),
        "client": _make_cert(d, "client", "/CN=Client Auth Only Root", *ca, "extendedKeyUsage=clientAuth"),
        "server": _make_cert(d, "server", "/CN=Server Auth Root", *ca, "extendedKeyUsage=serverAuth,clientAuth"),
        "multi-1": _make_cert(d, "multi-1", "/CN=Multi One", *ca),
        "multi-2": _make_cert(d, "multi-2", "/CN=Multi Two", *ca),
        "ou2": _make_cert(d, "ou2", "/O=Org Two/OU=Second Unit", *ca),
        "o-only": _make_cert(d, "o-only", "/C=DE/O=Only Org", *ca),
        "rekeyed": _make_cert(d, "rekeyed", "/CN=Rekeyed Distrusted Key", *ca, key="distrusted.key"),
        "by-serial": _make_cert(d, "by-serial", "/CN=Distrusted By Serial", *ca),
        "_spki_email": _spki_pem(d, "email").encode(),
    }


def _trust_root(root: Path, certs: dict[str, bytes]) -> None:
    etc = root / "etc/pki/ca-trust/source"
    usr = root / "usr/share/pki/ca-trust-source"
    for d in (etc / "anchors", etc / "blocklist", usr / "anchors", usr / "blocklist",
              root / "etc/pki/ca-trust/extracted/pem", root / "etc/pki/ca-trust/extracted/openssl",
              root / "usr/bin"):
        d.mkdir(parents=True, exist_ok=True)
    (etc / "anchors/local.pem").write_bytes(certs["local"])
    (etc / "blocklist/blocked.crt").write_bytes(certs["blocked"])
    (usr / "anchors/bundle.pem").write_bytes(certs["multi-2"] + certs["leaf"] + certs["multi-1"] + certs["client"]
                                             + certs["server"] + certs["ou-only"] + certs["ou2"] + certs["o-only"])

    def obj(label: str, pem: bytes, *lines: str) -> str:
        return "\n".join(["[p11-kit-object-v1]", f'label: "{label}"', *lines, "modifiable: false",
                          pem.decode().strip(), ""])

    serial_cert = catrust.parse_cert(_der(certs["by-serial"]))
    persist = "\n".join([
        "# This is a bundle of X.509 certificates of public Certificate Authorities.",
        obj("Bundle A Label", certs["bundle-a"], "trusted: true", "nss-mozilla-ca-policy: true"),
        obj("Email Only", certs["email"], "trusted: true"),
        "\n".join(["[p11-kit-object-v1]", 'label: "Email Only"', "class: x-certificate-extension",
                   "object-id: 2.5.29.37", f'value: "{_persist_value(_eku_extension(EMAIL))}"',
                   "modifiable: false", certs["_spki_email"].decode().strip(), ""]),
        obj("Distrusted %22quoted%22", certs["distrusted"], "x-distrusted: true"),
        obj("Blocked elsewhere", certs["blocked"], "trusted: true"),
        obj("Local again (a duplicate)", certs["local"], "trusted: true"),
        obj("Unit Only", certs["ou-only"], "trusted: true"),
        obj("Rekeyed", certs["rekeyed"], "trusted: true"),
        obj("By Serial", certs["by-serial"], "trusted: true"),
        "\n".join(["[p11-kit-object-v1]", 'label: "Distrust By Serial"', "class: certificate",
                   "certificate-type: x-509", "x-distrusted: true",
                   f'issuer: "{_persist_value(serial_cert.issuer)}"',
                   f'serial-number: "{_persist_value(serial_cert.serial)}"', "modifiable: false", ""]),
    ])
    (usr / "ca-bundle.trust.p11-kit").write_text(persist)
    (root / "etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem").write_bytes(b"stale\n")
    (root / "etc/pki/ca-trust/extracted/openssl/ca-bundle.trust.crt").write_bytes(b"stale\n")
    (root / "usr/bin/update-ca-trust").write_text("#!/bin/sh\n")


def _p11kit_oracle(root: Path, home: Path, out: Path) -> bytes:
    modules = home / ".config/pkcs11/modules"
    modules.mkdir(parents=True)
    system = Path("/usr/share/p11-kit/modules/p11-kit-trust.module").read_text()
    paths = f"{root}/etc/pki/ca-trust/source:{root}/usr/share/pki/ca-trust-source"
    lines = [f"x-init-reserved: paths={paths}" if line.startswith("x-init-reserved:") else line
             for line in system.splitlines()]
    (modules / "p11-kit-trust.module").write_text("\n".join(lines) + "\n")
    out.parent.mkdir(parents=True, exist_ok=True)
    for p in (home, root, out.parent):
        subprocess.run(["chmod", "-R", "a+rwX", str(p)], check=True)
    for parent in (*home.parents, *root.parents):
        if parent == Path("/"):
            break
        os.chmod(parent, os.stat(parent).st_mode | 0o005)
    proc = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "env", f"HOME={home}",
                           "p11-kit", "extract", "--format=pem-bundle", "--filter=ca-anchors", "--overwrite",
                           "--comment", "--purpose", "server-auth", str(out)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return out.read_bytes()


@pytest.mark.skipif(shutil.which("p11-kit") is None or shutil.which("setpriv") is None or os.geteuid() != 0,
                    reason="needs p11-kit (apt-get install p11-kit) and setpriv, as root")
def test_tls_bundle_is_p11kit_extract(certs: dict[str, bytes], tmp_path: Path) -> None:
    root = tmp_path / "root"
    _trust_root(root, certs)
    want = _p11kit_oracle(root, tmp_path / "home", tmp_path / "out" / "tls-ca-bundle.pem")
    # The oracle leaves out what it should (so the comparison means something):
    labels = [line for line in want.decode().splitlines() if line.startswith("#")]
    assert labels == ["# Local Root CA", "# Bundle A Label", "# Unit Only", "# Multi Two", "# Multi One",
                      "# Server Auth Root", "# Second Unit", "# Only Org"], labels
    for left_out in (b"Email Only", b"Distrusted", b"Blocked", b"not a ca", b"Client Auth Only", b"duplicate",
                     b"Rekeyed", b"By Serial"):
        assert left_out not in want
    layer = [Entry.file("usr/share/pki/ca-trust-source/anchors/new.pem", b"")]  # the upgrade touched a source
    merged = Merged(rootview.view_of(root, CAPTURE), layer)
    [result] = catrust.reproduce(merged, [], MTIME).values()
    [entry] = [e for e in result.entries if e.path.endswith("tls-ca-bundle.pem")]
    assert entry.content is not None and entry.mode == 0o444
    with entry.content() as f:
        assert f.read() == want
    assert any("openssl/ca-bundle.trust.crt" in n for n in result.notes)


def test_ca_certificates_post_runs_update_ca_trust(certs: dict[str, bytes], tmp_path: Path) -> None:
    """ca-certificates' %post calling update-ca-trust: reproduced, the stale outputs and ca-legacy named."""
    root = tmp_path / "root"
    _trust_root(root, certs)
    old = build_rpm(RpmSpec("ca-certificates", "2023.2.60", "1.el9", files=(
        RpmFile("/usr/share/pki/ca-trust-source/README", b"1\n"),)), tmp_path / "old")
    new = build_rpm(RpmSpec("ca-certificates", "2024.2.69", "1.el9", files=(
        RpmFile("/usr/share/pki/ca-trust-source/README", b"2\n"),), scripts=(
        ("post", "/usr/bin/ca-legacy install\n/usr/bin/update-ca-trust"),)), tmp_path / "new")
    init_root(root, [old])
    entries, text = _patch(root, new, tmp_path / "stage")
    bundle = next(e for e in entries if e.path == "etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem")
    assert bundle.content is not None
    with bundle.content() as f:
        assert f.read().startswith(b"# Local Root CA\n-----BEGIN CERTIFICATE-----\n")
    assert "reproduced: update-ca-trust" in text and text.endswith("%post: not reproduced: /usr/bin/ca-legacy"), text
    assert "/etc/pki/ca-trust/extracted/openssl/ca-bundle.trust.crt" in text


# ---------------------------------------------------------------------------------------------------- ldconfig

def _so(d: Path, soname: str, symbol: str) -> bytes:
    src = d / f"{symbol}.c"
    src.write_text(f"int {symbol}(void) {{ return 1; }}\n")
    out = d / f"{symbol}.so"
    subprocess.run(["gcc", "-shared", "-fPIC", f"-Wl,-soname,{soname}", "-o", str(out), str(src)], check=True)
    return out.read_bytes()


ORACLE_CONF = "etc/ld.so.conf.copa-oracle"


def _ldconfig(root: Path) -> None:
    """ldconfig -r with RHEL's directory order: its ld.so.conf, then glibc's system dirs for slibdir /lib64."""
    conf = (root / "etc/ld.so.conf").read_text() + "/lib\n/lib64\n/usr/lib\n/usr/lib64\n"
    (root / ORACLE_CONF).write_text(conf)
    subprocess.run(["ldconfig", "-r", str(root), "-f", "/" + ORACLE_CONF], check=True, capture_output=True)
    (root / ORACLE_CONF).unlink()


@pytest.mark.skipif(shutil.which("gcc") is None or shutil.which("ldconfig") is None, reason="needs gcc, ldconfig")
def test_ldconfig_after_a_library_upgrade(tmp_path: Path) -> None:
    build = tmp_path / "build"
    build.mkdir()
    foo1, foo2 = _so(build, "libfoo.so.1", "foo_one"), _so(build, "libfoo.so.1", "foo_two")
    bar = _so(build, "libbar.so.2", "bar")
    extra = _so(build, "libextra.so.0", "extra")
    common = (RpmFile("/etc/ld.so.conf.d/foo.conf", b"/usr/lib64/foo\n", attr="%config(noreplace)"),)
    old = build_rpm(RpmSpec("libfoo", "1.0", "1.el9", arch="x86_64", files=(
        *common, RpmFile("/usr/lib64/libfoo.so.1.0.0", foo1, 0o755),
        RpmFile("/usr/lib64/libfoo.so.1", kind="symlink", target="libfoo.so.1.0.0"),
    ), scripts=(("post -p /sbin/ldconfig", ""), ("postun -p /sbin/ldconfig", ""))), tmp_path / "old")
    new = build_rpm(RpmSpec("libfoo", "1.1", "1.el9", arch="x86_64", files=(
        *common, RpmFile("/usr/lib64/libfoo.so.1.1.0", foo2, 0o755),  # no soname link shipped: ldconfig makes it
        RpmFile("/usr/lib64/libbar.so.2.0", bar, 0o755),
        RpmFile("/usr/lib64/foo", kind="dir"), RpmFile("/usr/lib64/foo/libextra.so.0.1", extra, 0o755),
    ), scripts=(("post -p /sbin/ldconfig", ""), ("postun -p /sbin/ldconfig", ""))), tmp_path / "new")
    base = tmp_path / "base"
    (base / "usr/lib64").mkdir(parents=True)
    (base / "usr/lib").mkdir(parents=True)
    (base / "lib64").symlink_to("usr/lib64")
    (base / "lib").symlink_to("usr/lib")
    (base / "etc").mkdir()
    (base / "etc/ld.so.conf").write_text("include ld.so.conf.d/*.conf\n")
    init_root(base, [old])
    _ldconfig(base)
    oracle = debimage.copy_rootfs(base, tmp_path / "oracle")
    proc = subprocess.run([*rpm_root_args(oracle), "-U", "--nodeps", "--noscripts", str(new)], capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stderr
    _ldconfig(oracle)
    ours = debimage.copy_rootfs(base, tmp_path / "copa")
    entries, text = _patch(ours, new, tmp_path / "stage")
    rootview.apply(ours, entries)
    skip = frozenset({"var/lib/rpm/rpmdb.sqlite", "var/lib/rpm/rpmdb.sqlite-shm", "var/lib/rpm/rpmdb.sqlite-wal",
                      "var/lib/rpm/.rpm.lock"})
    diff = debimage.tree_diff(debimage.tree(ours, skip), debimage.tree(oracle, skip))
    assert not diff, "\n".join(diff)
    assert (ours / "etc/ld.so.cache").read_bytes() == (oracle / "etc/ld.so.cache").read_bytes()
    assert os.readlink(ours / "usr/lib64/libfoo.so.1") == "libfoo.so.1.1.0"
    assert "reproduced: ldconfig" in text and "not reproduced" not in text, text
    assert "%preun" not in text  # the old %postun (-p /sbin/ldconfig) is ldconfig too


# ---------------------------------------------------------------------------------------------------- users

PRE = textwrap.dedent("""\
    getent group copasvc >/dev/null || groupadd -r copasvc
    getent passwd copasvc >/dev/null || \\
        useradd -r -g copasvc -d /var/lib/copasvc -s /sbin/nologin -c "copa service" copasvc
    getent group tss >/dev/null || groupadd -f -g 59 -r tss
    getent passwd tss >/dev/null || useradd -r -u 59 -g tss -d /dev/null -s /sbin/nologin -c "TPM" tss
    getent group wheel2 >/dev/null || groupadd -r wheel2
    getent passwd solo >/dev/null || useradd -r -M solo
    exit 0
    """)
LOGIN_DEFS = "MAIL_DIR /var/spool/mail\nUMASK 022\nUID_MIN 1000\nUID_MAX 60000\nSYS_UID_MIN 201\n" \
             "SYS_UID_MAX 999\nGID_MIN 1000\nGID_MAX 60000\nSYS_GID_MIN 201\nSYS_GID_MAX 999\n" \
             "ENCRYPT_METHOD SHA512\nUSERGROUPS_ENAB yes\nCREATE_HOME yes\n"


def _accounts_root(root: Path) -> None:
    (root / "etc/default").mkdir(parents=True)
    (root / "etc/login.defs").write_text(LOGIN_DEFS)
    (root / "etc/default/useradd").write_text("GROUP=100\nHOME=/home\nINACTIVE=-1\nEXPIRE=\nSHELL=/bin/bash\n"
                                              "SKEL=/etc/skel\nCREATE_MAIL_SPOOL=yes\n")
    (root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/bash\nbin:x:1:1:bin:/bin:/sbin/nologin\n"
                                     "systemd-oom:x:999:999:systemd Userspace OOM Killer:/:/usr/sbin/nologin\n")
    (root / "etc/group").write_text("root:x:0:\nbin:x:1:\nwheel:x:10:\nsystemd-oom:x:999:\nwheel2:x:998:\n")
    (root / "etc/shadow").write_text("root:!locked::0:99999:7:::\nbin:*:19000:0:99999:7:::\n"
                                     "systemd-oom:!*:19000::::::\n")
    (root / "etc/gshadow").write_text("root:::\nbin:::\nwheel:::\nsystemd-oom:!*::\nwheel2:!::\n")
    for name in ("shadow", "gshadow"):
        os.chmod(root / "etc" / name, 0o000)


def _shadow_oracle(root: Path) -> None:
    wrapper = textwrap.dedent(f"""\
        ROOT={root}
        getent() {{ grep -q "^$2:" "$ROOT/etc/$1"; }}
        groupadd() {{ command groupadd -R "$ROOT" "$@"; }}
        useradd() {{ command useradd -R "$ROOT" "$@"; }}
        """)
    shadow = root / "etc/shadow"
    before = {line.split(":")[0] for line in shadow.read_text().splitlines()}
    env = {**os.environ, "SOURCE_DATE_EPOCH": str(MTIME)}
    proc = subprocess.run(["bash", "-c", wrapper + PRE], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    for path in (shadow, root / "etc/shadow-"):
        lines = [line.replace(":!:", ":!!:", 1) if line.split(":")[0] not in before else line
                 for line in path.read_text().splitlines()]
        path.write_text("\n".join(lines) + "\n")


@pytest.mark.skipif(shutil.which("useradd") is None or os.geteuid() != 0, reason="needs shadow's useradd, as root")
def test_pre_adds_users_as_useradd_does(tmp_path: Path) -> None:
    base = tmp_path / "base"
    _accounts_root(base)
    old = build_rpm(RpmSpec("copasvc", "1.0", "1.el9", files=(RpmFile("/usr/share/copasvc/x", b"1\n"),)),
                    tmp_path / "old")
    new = build_rpm(RpmSpec("copasvc", "1.1", "1.el9", files=(RpmFile("/usr/share/copasvc/x", b"2\n"),),
                            scripts=(("pre", PRE),)), tmp_path / "new")
    init_root(base, [old])
    oracle = debimage.copy_rootfs(base, tmp_path / "oracle")
    _shadow_oracle(oracle)
    ours = debimage.copy_rootfs(base, tmp_path / "copa")
    entries, text = _patch(ours, new, tmp_path / "stage")
    rootview.apply(ours, [e for e in entries if e.path.startswith("etc/")])
    for name in ("passwd", "group", "shadow", "gshadow", "passwd-", "group-", "shadow-", "gshadow-"):
        want = oracle / "etc" / name
        got = ours / "etc" / name
        assert got.exists() == want.exists(), name
        if want.exists():
            assert got.read_text() == want.read_text(), name
    passwd = (ours / "etc/passwd").read_text()
    assert "copasvc:x:998:997:copa service:/var/lib/copasvc:/sbin/nologin" in passwd
    assert "tss:x:59:59:TPM:/dev/null:/sbin/nologin" in passwd
    assert "useradd -r copasvc" in text and "not reproduced" not in text, text


# ---------------------------------------------------------------------------------------------------- end to end

OS_RELEASE = 'NAME="Red Hat Enterprise Linux"\nVERSION="9.4 (Plow)"\nID="rhel"\nID_LIKE="fedora"\n' \
             'VERSION_ID="9.4"\nPRETTY_NAME="Red Hat Enterprise Linux 9.4 (Plow)"\n'


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("gcc") is None or shutil.which("umoci") is None or os.geteuid() != 0,
                    reason="needs gcc, umoci, root")
def test_copa_patch_applies_macros_caps_and_ldconfig(tmp_path: Path) -> None:
    """`copa patch` of an image whose /etc/rpm/macros.image sets %_excludedocs: the unpacked result equals a copy
    upgraded by rpm -U (reading that macro file) followed by ldconfig; FILESTATES and the %caps xattr equal rpm's;
    the summary says ldconfig was reproduced."""
    build = tmp_path / "build"
    build.mkdir()
    foo1, foo2 = _so(build, "libfoo.so.1", "foo_one"), _so(build, "libfoo.so.1", "foo_two")

    def spec(version: str, lib: bytes, name: str) -> RpmSpec:
        return RpmSpec("libfoo", version, "1.el9", arch="x86_64", files=(
            RpmFile(f"/usr/lib64/{name}", lib, 0o755),
            RpmFile("/usr/bin/foo-ping", f"ping {version}".encode(), 0o755, caps="cap_net_raw,cap_setuid=ep"),
            RpmFile("/usr/share/doc/libfoo", kind="dir"),
            RpmFile("/usr/share/doc/libfoo/README", f"readme {version}\n".encode(), attr="%doc"),
        ), scripts=(("post -p /sbin/ldconfig", ""),))

    key = make_gpg_key(tmp_path / "gpg")
    old = build_rpm(spec("1.0", foo1, "libfoo.so.1.0.0"), tmp_path / "old")
    repo = tmp_path / "repo"
    new = build_rpm(spec("1.1", foo2, "libfoo.so.1.1.0"), repo)
    sign_rpms([new], key)
    createrepo(repo)
    root = tmp_path / "root"
    for d in ("usr/lib64", "usr/lib", "usr/bin", "etc/rpm", "etc/yum.repos.d", "etc/pki/rpm-gpg"):
        (root / d).mkdir(parents=True)
    (root / "lib64").symlink_to("usr/lib64")
    (root / "etc/ld.so.conf").write_text("include ld.so.conf.d/*.conf\n")
    (root / "etc/os-release").write_text(OS_RELEASE)
    (root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
    (root / "etc/group").write_text("root:x:0:\n")
    shutil.copy(key.public, root / "etc/pki/rpm-gpg/RPM-GPG-KEY-copa-test")
    glibc = build_rpm(RpmSpec("glibc", "2.34", "100.el9", arch="x86_64", files=(
        RpmFile("/sbin/ldconfig", b"#!/bin/true\n", 0o755), RpmFile("/bin/sh", b"#!/bin/true\n", 0o755))),
        tmp_path / "old")
    init_root(root, [old, glibc])
    (root / "etc/rpm/macros.image").write_text("%_excludedocs 1\n")
    _ldconfig(root)
    report = write_report(tmp_path / "trivy.json", {"libfoo": ("1.0-1.el9", "1.1-1.el9")}, os_version="9.4",
                          family="redhat")
    with RepoServer(repo) as server:
        (root / "etc/yum.repos.d/copa-test.repo").write_text(
            f"[copa-test]\nname=copa test\nbaseurl={server.url}/\nenabled=1\ngpgcheck=1\n"
            "gpgkey=file:///etc/pki/rpm-gpg/RPM-GPG-KEY-copa-test\n")
        images.builder.make_oci_layout(root, tmp_path / "layout", "ubi", cmd=None)
        proc = subprocess.run([sys.executable, "-m", "copa", "patch", "-i", f"oci:{tmp_path / 'layout'}:ubi", "-r",
                               str(report), "--oci-dir", str(tmp_path / "out"), "-t", "patched", "--json"],
                              cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True,
                              env={**os.environ, "SOURCE_DATE_EPOCH": str(MTIME), "COPA_DEBUG": ""})
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    patched = debimage.unpack_layout(tmp_path / "out", "patched", tmp_path / "bundle")
    oracle = debimage.copy_rootfs(root, tmp_path / "oracle")
    macros = f"/usr/lib/rpm/macros:/usr/lib/rpm/macros.d/macros.*:{oracle}/etc/rpm/macros.*"
    rpm, *rest = rpm_root_args(oracle)
    up = subprocess.run([rpm, "--macros", macros, *rest, "-U", "--nodeps", "--noscripts", str(new)],
                        capture_output=True, text=True)
    assert up.returncode == 0, up.stderr
    _ldconfig(oracle)
    skip = frozenset({"var/lib/rpm/rpmdb.sqlite", "var/lib/rpm/rpmdb.sqlite-shm", "var/lib/rpm/rpmdb.sqlite-wal",
                      "var/lib/rpm/.rpm.lock"})
    diff = debimage.tree_diff(debimage.tree(patched, skip), debimage.tree(oracle, skip))
    assert not diff, "\n".join(diff)
    assert not (patched / "usr/share/doc/libfoo").exists()
    fmt = "[%{FILENAMES} %{FILESTATES:fstate}\\n]"
    got = subprocess.run([*rpm_root_args(patched), "-q", "--qf", fmt, "libfoo"], capture_output=True, text=True)
    want = subprocess.run([*rpm_root_args(oracle), "-q", "--qf", fmt, "libfoo"], capture_output=True, text=True)
    assert got.stdout == want.stdout and "not installed" in want.stdout, got.stdout + got.stderr
    xattr = os.getxattr(oracle / "usr/bin/foo-ping", "security.capability")
    assert os.getxattr(patched / "usr/bin/foo-ping", "security.capability") == xattr
    [update] = [u for u in result["updates"] if u["name"] == "libfoo"]
    assert "ldconfig" in json.dumps(update) and "not run" not in json.dumps(update), update


def test_notes_name_what_stays_undone(tmp_path: Path) -> None:
    """Scriptlets copa does not reproduce are named per package: a lua %post, alternatives (chkconfig's), the old
    version's %preun, a trigger; systemctl is named as having no effect in a container."""
    old = build_rpm(RpmSpec("svc", "1.0", "1", scripts=(("preun", "rm -rf /var/cache/svc"),)), tmp_path / "old")
    new = build_rpm(RpmSpec("svc", "1.1", "1", scripts=(
        ("pre", "getent group svc >/dev/null || groupadd -r svc"),
        ("post -p <lua>", 'print("hello")'),
        ("posttrans", "alternatives --install /usr/bin/svc svc /usr/bin/svc-1 10\nsystemctl daemon-reload\n"
                      "/usr/lib/systemd/systemd-update-helper install-system-units svc.service || :"),
        ("triggerin -- bash", "cp /etc/shells /etc/shells.svc"))), tmp_path / "new")
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc/group").write_text("root:x:0:\n")
    (root / "etc/gshadow").write_text("root:::\n")
    init_root(root, [old])
    entries, text = _patch(root, new, tmp_path / "stage")
    assert "reproduced: groupadd -r svc" in text
    assert "%post not run (lua scriptlet)" in text
    assert "%posttrans: not reproduced: alternatives;" in text
    assert "no effect in a container: /usr/lib/systemd/systemd-update-helper, systemctl" in text
    assert "old %preun: not reproduced: rm" in text and "triggers: not reproduced: cp" in text, text
    assert any(e.path == "etc/group" for e in entries)


def test_installed_packages_triggers_are_named(tmp_path: Path) -> None:
    """Triggers of installed packages that the upgrade fires (a file trigger on a prefix the new version writes
    under, a name trigger on the package) are named; an ldconfig file trigger is the libraries effect's."""
    watcher = build_rpm(RpmSpec("watcher", "1.0", "1", scripts=(
        ("filetriggerin -- /usr/share/glib-2.0/schemas", "glib-compile-schemas /usr/share/glib-2.0/schemas"),
        ("transfiletriggerin -p /sbin/ldconfig -- /usr/lib64", ""),
        ("filetriggerin -- /usr/share/elsewhere", "never-fired"),
        ("triggerin -- svc", "touch /var/run/svc-seen"))), tmp_path / "old")
    old = build_rpm(RpmSpec("svc", "1.0", "1"), tmp_path / "old")
    new = build_rpm(RpmSpec("svc", "1.1", "1", files=(
        RpmFile("/usr/share/glib-2.0/schemas/svc.xml", b"<x/>\n"), RpmFile("/usr/lib64/libsvc.so.1", b"x"))),
        tmp_path / "new")
    root = tmp_path / "root"
    init_root(root, [watcher, old])
    view = rootview.view_of(root, CAPTURE)
    headers = [Header.parse(b, "installed") for b in read_database(view).headers.values()]
    svc_old = next(h for h in headers if h.string(1000) == "svc")
    contents = read_rpm(new, tmp_path / "stage")
    package = effects_package(contents, svc_old, headers)
    text = package.scripts["%installed triggers"].decode()
    assert "glib-compile-schemas" in text and "touch /var/run/svc-seen" in text
    assert "ldconfig" not in text and "never-fired" not in text
    outcome = reproduce(view, [], [package], "rpm", "amd64", MTIME)
    assert "installed triggers: not reproduced: glib-compile-schemas, touch" in note(outcome, "svc")
