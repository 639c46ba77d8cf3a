"""copa/pkg/effects/users against the real adduser (3.134) and shadow's groupadd/useradd, run in a chroot copy of
the bookworm fixture: each call, reproduced by copa on the tree as it is, must give the same /etc/passwd, group,
shadow, gshadow and home directory as the real tools then make."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from copa.oci.layer import Kind
from copa.pkg.effects import reproduce, scripts, users
from copa.pkg.effects.merged import Merged
from copa.pkg.effects.model import Package
from tests.support import alpine
from tests.support.images import debian_rootfs
from tests.support.rootview import view_of

pytestmark = [
    pytest.mark.slow,
    pytest.mark.live,  # the bookworm fixture is built from the Debian archive on a cold cache
    pytest.mark.skipif(os.geteuid() != 0, reason="chroot needs root"),
]

EPOCH = 1_700_000_000
TABLES = ("etc/passwd", "etc/group", "etc/shadow", "etc/gshadow", "etc/passwd-", "etc/group-", "etc/shadow-",
          "etc/gshadow-")
CALLS = [
    "adduser --system --group --home /var/lib/svc1 svc1",
    "adduser --system --no-create-home --home /var/lib/svc2 svc2",
    'adduser --quiet --system --ingroup svc1 --shell /bin/bash --gecos "Service three" svc3',
    "addgroup --system grp4",
    "adduser --system --group svc1",
    "adduser --system --group --home /nonexistent svc5",
    "adduser --system --home /srv/deep/svc6 svc6",
    "addgroup --system grp4",
    "groupadd -r g1",
    "useradd -r u1",
    'useradd -r -g g1 -d /var/lib/u2 -s /bin/false -c "U two" u2',
    "useradd --system -M u3",
    "groupadd -r g2",
    "useradd -r -g g1 u5",
    "useradd -r -g 999 u6",
    "useradd -r u7",  # its uid is free as a gid, below the highest free gid: taken as the gid
]


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    base = tmp_path_factory.mktemp("users") / "root"
    subprocess.run(["cp", "-a", str(debian_rootfs()), str(base)], check=True)
    yield base
    shutil.rmtree(base, ignore_errors=True)


def _state(root: Path) -> dict[str, object]:
    out: dict[str, object] = {}
    for t in TABLES:
        p = root / t
        if p.exists():
            st = p.stat()
            out[t] = (p.read_text(), oct(st.st_mode), st.st_uid, st.st_gid)
    for home in ("var/lib/svc1", "var/lib/svc2", "srv/deep", "srv/deep/svc6", "nonexistent", "home/svc3",
                 "home/svc5"):
        p = root / home
        if p.exists():
            st = p.stat()
            out[home] = (oct(st.st_mode), st.st_uid, st.st_gid)
    return out


def test_same_as_adduser(root: Path) -> None:
    changed = 0
    for line in CALLS:
        before = _state(root)
        merged = Merged(view_of(root, ("etc",)), [])
        accounts = users.Accounts(merged, "dpkg", EPOCH)
        done = accounts.run(scripts.commands(line))
        assert done is not None, line
        ours = dict(before)
        for e in accounts.entries():
            if e.kind is Kind.FILE:
                assert e.content is not None
                with e.content() as f:
                    ours[e.path] = (f.read().decode(), oct(0o100000 | e.mode), e.uid, e.gid)
            else:
                ours[e.path] = (oct(0o40000 | e.mode), e.uid, e.gid)
        subprocess.run(["chroot", str(root), *scripts.commands(line)[0].name.split(),
                        *scripts.commands(line)[0].argv], check=False, capture_output=True,
                       env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "SOURCE_DATE_EPOCH": str(EPOCH)})
        after = _state(root)
        assert ours == after, line
        changed += before != after
    assert changed == len(CALLS) - 2  # the calls mean something: all but the two repeats changed the tree


def test_what_is_not_reproduced() -> None:
    for line in ("adduser --system $NAME", "useradd -r svc", "adduser --system --uid 500 svc",
                 "adduser --system --gecos 'a,b' svc", "adduser svc", "adduser -S -D svc", "addgroup -S grp",
                 "useradd -m -r svc", "useradd svc", "groupadd -g 5 -r grp"):
        merged = Merged(view_of(Path("/nonexistent-root"), ()), [])
        assert users.Accounts(merged, "dpkg", 0).run(scripts.commands(line)) is None, line
    for line in ("adduser -S svc", "adduser -S -D $USER", "adduser -D svc", "adduser -S -D -u 5 svc"):
        merged = Merged(view_of(Path("/nonexistent-root"), ()), [])
        assert users.Accounts(merged, "apk", 0).run(scripts.commands(line)) is None, line


BUSYBOX_CALLS = [
    "addgroup -S grp1",
    "adduser -S -D -H -h /var/lib/svc1 -s /sbin/nologin -G grp1 svc1",
    "adduser -S -D -h /var/lib/svc2 svc2",
    'adduser -SDH -g "Svc three" svc3',
    "addgroup -S grp4",
    "adduser -S -D -G grp4 svc5",
]


def test_same_as_busybox(tmp_path: Path) -> None:
    """Alpine's busybox adduser/addgroup, run in a chroot copy of the Alpine fixture. busybox takes the shadow
    day from the clock, so copa is given the present time."""
    root = alpine.copy_rootfs(alpine.alpine_rootfs(), tmp_path / "root")
    changed = 0
    for line in BUSYBOX_CALLS:
        before = _state(root)
        merged = Merged(view_of(root, ("etc",)), [])
        accounts = users.Accounts(merged, "apk", int(time.time()))
        done = accounts.run(scripts.commands(line))
        assert done is not None, line
        ours = dict(before)
        for e in accounts.entries():
            if e.kind is Kind.FILE:
                assert e.content is not None
                with e.content() as f:
                    ours[e.path] = (f.read().decode(), oct(0o100000 | e.mode), e.uid, e.gid)
            else:
                ours[e.path] = (oct(0o40000 | e.mode), e.uid, e.gid)
        command = scripts.commands(line)[0]
        proc = subprocess.run(["chroot", str(root), command.name, *command.argv], capture_output=True, text=True,
                              env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
        assert proc.returncode == 0, proc.stderr
        after = _state(root)
        assert ours == after, line
        changed += before != after
    assert changed == len(BUSYBOX_CALLS)


def test_apk_scripts_run_as_apk_runs_them() -> None:
    """apk runs .pre-install on a new install only and .pre-upgrade on an upgrade only: a user the new version's
    .pre-install would create is not created by an upgrade."""
    view = view_of(alpine.alpine_rootfs(), ("etc",))
    script = {".pre-install": b"#!/bin/sh\naddgroup -S copasvc 2>/dev/null\nadduser -S -D -H -G copasvc copasvc\n"}
    for old, created in (("1.0-r0", False), ("", True)):
        outcome = reproduce(view, [], [Package("copa-svc", old, "1.1-r0", script)], "apk", "x86_64", 0)
        paths = {e.path for e in outcome.entries}
        assert ("etc/passwd" in paths) == created, old
        assert ("addgroup -S copasvc" in " ".join(outcome.done.get("copa-svc", ()))) == created, old
        assert not outcome.notes.get("copa-svc"), outcome.notes  # done, or not run at all: nothing left undone
