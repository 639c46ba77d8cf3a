"""A distribution-sized primary.xml: copa's index of it (the layout scan, and the expat reader it falls back to)
beside dnf reading the same repository (libsolv, C) and the floor of decompressing it, in one run.

A real RHEL/Rocky/Fedora repository's primary holds 5 000-70 000 packages; the rpm benchmarks' repositories hold a
few dozen, so this cost does not show there. The primary is made of createrepo_c's own output: a few packages built
by rpmbuild (with the relation and file counts of a distribution's packages) and indexed by createrepo_c, whose
<package> elements are repeated under new names and checksums up to --packages. For dnf the repository's
primary is swapped in by `modifyrepo_c`.

    .venv/bin/python benchmarks/bench_primary.py [--packages 20000] [--repeat 3]

Rows: copa's `RepoIndex.warm()` (the parse a cold patch does, written to a fresh cache: the layout scan), the
same with the scan turned off (the expat reader's rows), `dnf makecache` of the repository (libsolv's parse into
its solv cache), and `gzip -d` of the primary (the floor: the bytes must be decompressed whoever reads them).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from _measure import BENCH_CACHE, REPO, Measurement, measure, median, print_table

from tests.support.rpmrepo import build_repo
from tests.support.rpmtools import GpgKey, RpmSpec, rpm_spec

TEMPLATES = 8  # packages built by rpmbuild, whose elements are repeated


def _spec(i: int) -> RpmSpec:
    lines = [f"Requires: libdep{i}_{k}.so.{k}()(64bit)" for k in range(14)]
    lines += [f"Requires: tool{k} >= {k}.0" for k in range(6)] + ["Requires(pre): /bin/sh"]
    lines += [f"Provides: libtpl{i}.so.{k}()(64bit)" for k in range(4)] + [f"Provides: tpl{i}-compat = 1.0"]
    files = {f"/usr/bin/tpl{i}-{k}": f"{k}" for k in range(3)} | {f"/etc/tpl{i}.conf": "c"}
    return rpm_spec(f"tpl{i}", "1.2.3", "4.el9", arch="x86_64", lines=lines, files=files)


def primary(packages: int) -> Path:
    """The synthetic primary (cached under the benchmarks' cache): createrepo_c's elements, repeated."""
    out = BENCH_CACHE / f"primary-{packages}.xml.gz"
    if out.is_file():
        return out
    work = Path(tempfile.mkdtemp(prefix="bench-primary-"))
    try:
        repo = build_repo(work / "repo", [_spec(i) for i in range(TEMPLATES)])
        head, elements = _elements(next((repo.root / "repodata").glob("*-primary.xml.gz")))
        rnd = random.Random(13)
        parts = [re.sub(r'packages="\d+"', f'packages="{packages}"', head)]
        for n in range(packages):
            i = n % TEMPLATES
            name = f"pkg{n:05d}-{rnd.choice(['lib', 'devel', 'tools', 'common'])}"
            element = elements[i].replace(f"tpl{i}", name)
            digest = hashlib.sha256(name.encode()).hexdigest()
            element = re.sub(r'(pkgid="YES">)[0-9a-f]+', rf"\g<1>{digest}", element)
            parts.append(element)
        parts.append("</metadata>\n")
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(".tmp")
        with gzip.open(tmp, "wt", compresslevel=6, encoding="utf-8") as f:
            f.write("".join(parts))
        tmp.replace(out)
        return out
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _elements(path: Path) -> tuple[str, list[str]]:
    """A primary's text before its first <package>, and its <package> elements as written."""
    text = gzip.decompress(path.read_bytes()).decode()
    head, _, rest = text.partition("<package ")
    if not rest:
        return head.rsplit("</metadata>", 1)[0], []
    return head, ["<package " + e for e in rest.rsplit("</metadata>", 1)[0].split("<package ")]


def replace_primary(repodata: Path, text: str, key: GpgKey | None) -> None:
    """`text` as the repository's primary (modifyrepo_c, which compresses it and rewrites repomd.xml), repomd.xml
    signed again when the repository was."""
    with tempfile.TemporaryDirectory(dir=repodata.parent) as tmp:
        plain = Path(tmp) / "primary.xml"  # (the name modifyrepo_c's file is named after)
        plain.write_text(text)
        for step in (["--remove", "primary"], ["--mdtype=primary", str(plain)]):
            subprocess.run(["modifyrepo_c", *step, str(repodata)], check=True, capture_output=True)
    if key is not None:
        key.sign_detached(repodata / "repomd.xml")


def _link_packages(src: str, dst: str) -> None:
    """Packages hard-linked, metadata copied (modifyrepo_c and gpg rewrite it, which must not reach the source)."""
    if src.endswith(".rpm"):
        os.link(src, dst)
    else:
        shutil.copy2(src, dst)


def pad_repository(source: Path, dest: Path, extra: int, key: GpgKey | None) -> Path:
    """A copy of the createrepo_c repository `source` (packages hard-linked) whose primary also lists `extra`
    packages of `primary(extra)`, which are not in it (a distribution's repository, of which a patch downloads
    a few): the size of the metadata a real repository makes copa and dnf read."""
    shutil.copytree(source, dest, copy_function=_link_packages)
    repodata = dest / "repodata"
    own = next(repodata.glob("*-primary.xml*"))
    head, elements = _elements(own)
    _padding_head, padding = _elements(primary(extra))
    text = re.sub(r'packages="\d+"', f'packages="{len(elements) + len(padding)}"', head)
    replace_primary(repodata, text + "".join(elements) + "".join(padding) + "</metadata>\n", key)
    return dest


_INDEX = """
import sys, tempfile
from pathlib import Path
import copa.pkg.rpm.repomd as repomd
from copa.pkg.cache import Cache
from copa.pkg.rpm.repos import RpmRepository
if sys.argv[2] == "reader":
    def refuse(_stream, _what):
        raise repomd.NotCanonical
    repomd._canonical_source = refuse
path = Path(sys.argv[1])
entry = repomd.RepomdEntry("primary", path.name, repomd.Checksum("sha256", "0" * 64), None)
loaded = repomd.LoadedRepomd(RpmRepository("b", "b", ("file:///",)), "file:///", repomd.Repomd("1", {"primary": entry},
                             "0" * 64), False)
index = repomd.RepoIndex(loaded, path, None, Cache(Path(tempfile.mkdtemp(dir=sys.argv[3]))))
index.warm()
print(len(index.names()))
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--packages", type=int, default=20000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    path = primary(args.packages)
    work = Path(tempfile.mkdtemp(prefix="bench-primary-run-"))
    try:
        repo = work / "repo"
        repo.mkdir()
        subprocess.run(["createrepo_c", "--quiet", "--no-database", str(repo)], check=True)
        replace_primary(repo / "repodata", gzip.decompress(path.read_bytes()).decode(), None)
        python = sys.executable
        runs: dict[str, list[Measurement]] = {}
        for r in range(args.repeat):  # interleaved, so a slow spell of the machine hits every row alike
            for label, argv in (
                ("copa index (layout scan)", [python, "-c", _INDEX, str(path), "scan", str(work)]),
                ("copa index (expat reader)", [python, "-c", _INDEX, str(path), "reader", str(work)]),
                ("dnf makecache (libsolv)", ["dnf", "-q", "--setopt=reposdir=/dev/null",
                                             f"--setopt=cachedir={work}/dnf-{r}", f"--repofrompath=big,{repo}",
                                             "--repo=big", "makecache"]),
                ("gzip -d (floor)", ["sh", "-c", f"gzip -dc {path} > /dev/null"]),
            ):
                runs.setdefault(label, []).append(measure(label, argv, cwd=REPO))
        rows = [median(label, ms) for label, ms in runs.items()]
        floor = rows[-1].seconds
        dnf = rows[2].seconds
        print_table(f"primary.xml with {args.packages} packages ({path.stat().st_size >> 20} MiB compressed), "
                    f"medians of {args.repeat}", rows,
                    {r.label: f"{r.seconds / dnf:.2f}x dnf, {r.seconds / floor:.1f}x floor" for r in rows})
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
