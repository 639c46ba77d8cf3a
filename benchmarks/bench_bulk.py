#!/usr/bin/env python3
"""Fleet benchmark: `copa bulk` over many images vs a shell loop of single `copa patch` calls, in the same run.

A fresh docker-registry is filled with N images (default 200) over four bases: the hermetic Debian image and the
"quirks" image of tests/support/debimage.py, and each of them with one more middleware layer. Repository r uses base
r % 4; each of its tags adds its own small application layer, so every image is distinct and every patched image
has its own digest. One local signed repository (the hermetic and quirks packages, 1.0 and 2.0) upgrades them all;
no report is given (update-all), so every image gets the same plan as the others of its base.

Measured, each with GNU time (wall, peak RSS of the largest process):
  loop        `bash loop.sh`: one `copa patch -i SRC -t TARGET --push` per image, in sequence, one fresh cache
  bulk W cold `copa bulk fleet.yaml --push --workers W` with a fresh --cache-dir
  bulk W warm the same again (other targets) with the cache the cold run filled
Printed: wall seconds, images per minute, seconds per image, and the speed-up over the loop. The marginal cost of
one more image on a seen base is estimated from two warm sweeps of different sizes (n and N images, 1 worker):
(t_N - t_n) / (N - n).

    .venv/bin/python benchmarks/bench_bulk.py [--images 200] [--workers 1,2,4] [--skip-loop]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent))

from _measure import REPO, Measurement, measure, print_table, registry

from tests.support import debimage, fleet, images
from tests.support.aptrepo import AptRepo, RepoServer, build_repo, make_key

BASES = 4
TAGS_PER_REPO = 10
EPOCH = "1700000000"


def combined_repo(work: Path) -> AptRepo:
    """The hermetic and quirks packages (no name in common) in one signed repository: every base's sources line
    names the same REPO_URL, which one --mirror maps onto it."""
    specs = [*debimage.INSTALLED, *debimage.UPGRADES, *debimage.QUIRKS_INSTALLED, *debimage.QUIRKS_UPGRADES]
    return build_repo(work / "repo", specs, key=make_key(work / "key"), suite=debimage.SUITE)


def bases(work: Path) -> list[debimage.BaseImage]:
    plain = [debimage.base_image(), debimage.quirks_image()]
    derived = []
    for n, base in enumerate(plain):
        layout = images.copy_layout(base.layout, work / f"base-mw{n}")
        fleet.add_layer(layout, base.ref, {f"opt/middleware{n}/lib.txt": f"middleware {n}\n"}, f"COPY mw{n}")
        derived.append(debimage.BaseImage(base.rootfs, layout, base.ref))
    return plain + derived


def fill(host: str, count: int, work: Path) -> list[fleet.FleetImage]:
    """`count` images: repository r (bulk/appR) on base r % BASES, tags 1.0, 1.1, ... (pushed 4 at a time)."""
    all_bases = bases(work)
    plan = [(f"app{n // TAGS_PER_REPO}", f"1.{n % TAGS_PER_REPO}") for n in range(count)]

    def one(item: tuple[str, str]) -> fleet.FleetImage:
        app, tag = item
        base = all_bases[int(app[3:]) % BASES]
        return fleet.push_fleet(host, "bulk", [(app, tag)], work / "images", base)[0]

    (work / "images").mkdir()
    with ThreadPoolExecutor(4) as pool:
        out = list(pool.map(one, plan))
    shutil.rmtree(work / "images")
    return out


def write_config(path: Path, fleet_images: list[fleet.FleetImage], suffix: str) -> Path:
    """A PatchConfig naming exactly these images (a `list` of tags per repository)."""
    tags: dict[tuple[str, str], list[str]] = {}
    for i in fleet_images:
        tags.setdefault((i.host, i.repository), []).append(i.tag)
    lines = ["apiVersion: copa.sh/v1alpha1", "kind: PatchConfig", "target:",
             f'  tag: "{{{{ .SourceTag }}}}-{suffix}"', "images:"]
    for (host, repository), listed in sorted(tags.items()):
        lines += [f"  - name: {repository.replace('/', '-')}", f"    image: {host}/{repository}", "    tags:",
                  "      strategy: list", f"      list: [{', '.join(json.dumps(t) for t in listed)}]"]
    path.write_text("\n".join(lines) + "\n")
    return path


def cache_counts(cache: Path) -> tuple[int, int]:
    """(layers read, patch layers built) so far with this cache: each layer read is recorded by its diff_id
    (copa.oci.layercache) and each patch layer built is stored under its key (copa.oci.layerstore); a repeat is
    replayed or reused, and its blob mounted rather than uploaded."""
    derived = cache / "derived"
    return (sum(1 for _ in (derived / "layers").rglob("*.rec")),
            sum(1 for _ in (derived / "patch-layers").rglob("*.json")))


def check_sweep(doc_path: Path, count: int) -> None:
    doc = json.loads(doc_path.read_text())
    if doc["counts"]["patched"] != count:
        raise SystemExit(f"a sweep patched {doc['counts']['patched']} of {count} images: {doc['counts']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--workers", default="1,2,4", help="comma-separated worker counts to sweep with")
    parser.add_argument("--skip-loop", action="store_true", help="leave out the shell loop (the slowest part)")
    args = parser.parse_args()
    counts = [int(w) for w in args.workers.split(",")]
    os.environ["SOURCE_DATE_EPOCH"] = EPOCH
    copa = [sys.executable, "-m", "copa"]
    work = Path(tempfile.mkdtemp(prefix="bench-bulk-"))
    rows: list[Measurement] = []
    per_image: dict[str, str] = {}
    work_done: dict[str, tuple[int, int]] = {}
    try:
        repo = combined_repo(work)
        assert repo.key is not None
        with registry("bulk") as reg, RepoServer(repo.root) as server:
            flags = ["--mirror", f"{debimage.REPO_URL}={server.url}", "--keyring", str(repo.key.keyring)]
            fleet_images = fill(reg.host, args.images, work)
            print(f"{len(fleet_images)} images over {BASES} bases pushed to {reg.host}", file=sys.stderr)

            def sweep(label: str, workers: int, cache: Path, subset: list[fleet.FleetImage]) -> Measurement:
                before = cache_counts(cache)
                suffix = label.replace(" ", "-")
                config = write_config(work / f"{suffix}.yaml", subset, suffix)
                out = work / f"{suffix}.json"
                m = measure(label, ["sh", "-c", 'exec "$@" > "$0"', str(out), *copa, "bulk", str(config), "--push",
                                    "--workers", str(workers), "--json", "--progress", "quiet", "--cache-dir",
                                    str(cache), *flags], cwd=REPO)
                check_sweep(out, len(subset))
                after = cache_counts(cache)
                work_done[label] = (after[0] - before[0], after[1] - before[1])
                return m

            if not args.skip_loop:
                loop = work / "loop.sh"
                cache = work / "cache-loop"
                loop.write_text("set -e\n" + "".join(
                    f"{' '.join(copa)} patch -i {i.reference} -t {i.target('loop')} --push --progress quiet "
                    f"--cache-dir {cache} {' '.join(flags)} > /dev/null\n" for i in fleet_images))
                rows.append(measure("shell loop", ["bash", str(loop)], cwd=REPO))
            for w in counts:
                cache = work / f"cache-w{w}"
                rows.append(sweep(f"bulk w{w} cold", w, cache, fleet_images))
                rows.append(sweep(f"bulk w{w} warm", w, cache, fleet_images))
            # Marginal cost of one more image on seen bases: two warm single-worker sweeps of different sizes.
            small = fleet_images[: max(2 * BASES, len(fleet_images) // 4)]
            cache = work / f"cache-w{counts[0]}"
            a = sweep("bulk w1 warm small", 1, cache, small)
            b = sweep("bulk w1 warm full", 1, cache, fleet_images)
            rows += [a, b]
            marginal = (b.seconds - a.seconds) / (len(fleet_images) - len(small))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    loop_row = next((r for r in rows if r.label == "shell loop"), None)
    for r in rows:
        n = len(fleet_images) if "small" not in r.label else len(small)
        speed = f", {loop_row.seconds / r.seconds:.1f}x loop" if loop_row and r is not loop_row else ""
        per_image[r.label] = f"{60 * n / r.seconds:.0f} img/min, {r.seconds / n:.2f} s/img{speed}"
    print_table(f"copa bulk, {len(fleet_images)} images over {BASES} bases, {os.cpu_count()} CPUs", rows, per_image)
    print(f"\nmarginal cost of one more image on a seen base (1 worker, warm): {marginal:.2f} s")
    for label, (read, built) in work_done.items():
        print(f"{label}: {read} layers read (the rest replayed from their records), {built} patch layers built "
              "and uploaded (the rest reused and mounted)")


if __name__ == "__main__":
    main()
