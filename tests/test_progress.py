"""--progress: the real CLI patching the real Debian fixture (pushed to a real registry, packages from the archive).

tty: run in a real pseudo-terminal (a private tmux server), its screen read while it runs and after; plain: stderr
piped (auto); json: every line parsed, the byte counts checked against what others say: the registry's manifests
(layer and blob sizes), the files the download left in the cache, and the file sizes in the pushed patch layer;
quiet: nothing on success, one line on an error.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from copa import events
from copa.events import Finish, TaskInfo
from copa.oci.registry import STREAM_START
from tests.support import images, multiplatform
from tests.support.registry import RunningRegistry
from tests.support.trivy import dpkg_versions, fixed_packages, write_report

pytestmark = [pytest.mark.live, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "SOURCE_DATE_EPOCH": "1704067200", "COPA_DEBUG": ""}
BAR = "━"  # rich's bar glyph (also its background): present on a screen only while a bar is drawn
BYTES_OF = re.compile(r"\d+(?:\.\d+)?/\d+(?:\.\d+)? [kMG]?B\b")  # rich's download column: 18.9/90.2 MB


def copa(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "copa", *args], cwd=ROOT, env=ENV, capture_output=True, text=True)


def skopeo_raw(ref: str) -> dict[str, Any]:
    out = subprocess.run(["skopeo", "inspect", "--tls-verify=false", "--raw", f"docker://{ref}"],
                         check=True, capture_output=True).stdout
    doc: dict[str, Any] = json.loads(out)
    return doc


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    fixes = fixed_packages(dpkg_versions(images.debian_rootfs()), dpkg_versions(images.oracle_rootfs()))
    assert fixes, "bookworm-security should have newer versions of some fixture packages"
    return write_report(tmp_path_factory.mktemp("report") / "trivy.json", fixes)


@pytest.fixture(scope="module")
def image(anon_registry: RunningRegistry) -> str:
    layout, ref = images.debian_layout()
    images.push_layout(layout, ref, anon_registry.host, "progress:1.0")
    return f"{anon_registry.host}/progress:1.0"


# ----------------------------------------------------------------------------------------------------- tty


@dataclass
class Screen:
    returncode: int
    running: list[str]  # the screens seen while it ran
    final: str  # the visible screen once it ended
    history: str  # everything the terminal shows, scrollback included
    cursor_visible: bool


class Tmux:
    """A tmux server of our own (its own socket), so nothing else's sessions are touched."""

    def __init__(self, workdir: Path) -> None:
        self.socket = f"copa-progress-{os.getpid()}"
        self.workdir = workdir

    def tmux(self, *args: str) -> str:
        return subprocess.run(["tmux", "-L", self.socket, "-f", "/dev/null", *args], check=True,
                              capture_output=True, text=True).stdout

    def run(self, name: str, argv: list[str], interrupt_when: str | None = None, limit: float = 300) -> Screen:
        """Run `argv` in a 120x40 terminal, capturing the screen every 0.1 s until it exits; with `interrupt_when`,
        press Ctrl-C once a screen shows that text."""
        rc = self.workdir / f"{name}.rc"
        command = f"{shlex.join(argv)}; echo $? > {shlex.quote(str(rc))}; sleep 3600"
        self.tmux("new-session", "-d", "-x", "120", "-y", "40", "-s", name, "-c", str(ROOT),
                  "env", *(f"{k}={v}" for k, v in ENV.items() if k in ("SOURCE_DATE_EPOCH", "COPA_DEBUG")),
                  "bash", "-c", command)
        running: list[str] = []
        deadline = time.monotonic() + limit
        while not rc.exists():
            assert time.monotonic() < deadline, f"{argv} did not end in {limit}s"
            screen = self.tmux("capture-pane", "-p", "-t", name)
            running.append(screen)
            if interrupt_when is not None and interrupt_when in screen:
                self.tmux("send-keys", "-t", name, "C-c")
                interrupt_when = None
            time.sleep(0.1)
        time.sleep(0.2)  # the exit code is written after the last output
        return Screen(
            returncode=int(rc.read_text()),
            running=running,
            final=self.tmux("capture-pane", "-p", "-t", name),
            history=self.tmux("capture-pane", "-p", "-S", "-", "-t", name),
            cursor_visible=self.tmux("display-message", "-p", "-t", name, "#{cursor_flag}").strip() == "1",
        )

    def stop(self) -> None:
        subprocess.run(["tmux", "-L", self.socket, "kill-server"], capture_output=True)


@pytest.fixture(scope="module")
def tmux(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tmux]:
    if shutil.which("tmux") is None:
        pytest.fail("tmux is missing: run scripts/setup")
    t = Tmux(tmp_path_factory.mktemp("tmux"))
    yield t
    t.stop()


@pytest.fixture(scope="module")
def tty(tmux: Tmux, image: str, report: Path, tmp_path_factory: pytest.TempPathFactory) -> Screen:
    cache = tmp_path_factory.mktemp("tty-cache")
    return tmux.run("patch", [sys.executable, "-m", "copa", "patch", "-i", image, "-r", str(report), "-t", "1.0-tty",
                              "--push", "--cache-dir", str(cache)])


def test_tty_shows_live_bars_with_bytes(tty: Screen) -> None:
    assert tty.returncode == 0, tty.history
    bars = [line for screen in tty.running for line in screen.splitlines() if BAR in line]
    with_bytes = [line for line in bars if BYTES_OF.search(line)]
    assert any(line.startswith("reading layer 1/1 ") for line in with_bytes), "\n".join(bars) or tty.history
    # The patch layer and the pushed blob are the other long tasks; at least one shows a rate (rich: 12.3 MB/s).
    assert any(re.search(r"[kMG]?B/s", line) for line in with_bytes), "\n".join(bars)
    # Steps are lines above the bars, while they run.
    assert any("==> reading the image's files" in s and BAR in s for s in tty.running)


def test_tty_final_screen_is_clean(tty: Screen) -> None:
    assert BAR not in tty.history, tty.history  # bars were drawn in place and removed, none left in the scrollback
    assert tty.cursor_visible, "the cursor must be shown again when the bars stop"
    lines = tty.history.rstrip("\n").splitlines()
    assert "==> reading the image's files" in lines
    assert any(line.startswith("==> building the patch layer (") for line in lines)
    assert tty.final.rstrip("\n").splitlines()[-1].startswith("done in ")  # the summary, last on the screen
    assert re.search(r"^wrote \S+:1\.0-tty \(digest sha256:[0-9a-f]{64}\)$", tty.final, re.M), tty.final


def test_tty_interrupt_leaves_the_terminal_clean(tmux: Tmux, image: str, report: Path, tmp_path: Path) -> None:
    screen = tmux.run("interrupt", [sys.executable, "-m", "copa", "patch", "-i", image, "-r", str(report),
                                    "-t", "1.0-interrupted", "--push", "--cache-dir", str(tmp_path / "cache")],
                      interrupt_when="reading layer")
    assert screen.returncode == 130, screen.history
    assert screen.final.rstrip("\n").splitlines()[-1] == "copa: interrupted; nothing was tagged", screen.final
    assert BAR not in screen.final and "Traceback" not in screen.history
    assert screen.cursor_visible


# ----------------------------------------------------------------------------------------------------- json


@dataclass
class JsonRun:
    events: list[dict[str, Any]]
    cache: Path
    result: dict[str, Any]


@pytest.fixture(scope="module")
def json_image(anon_registry: RunningRegistry) -> str:
    # A repository of its own: what the tty run pushed (the same patch layer: SOURCE_DATE_EPOCH) is not there.
    layout, ref = images.debian_layout()
    images.push_layout(layout, ref, anon_registry.host, "progress-json:1.0")
    return f"{anon_registry.host}/progress-json:1.0"


@pytest.fixture(scope="module")
def json_run(json_image: str, report: Path, tmp_path_factory: pytest.TempPathFactory) -> JsonRun:
    cache = tmp_path_factory.mktemp("json-cache")
    proc = copa("patch", "-i", json_image, "-r", str(report), "-t", "1.0-json", "--push", "--json", "--progress",
                "json", "--cache-dir", str(cache))
    assert proc.returncode == 0, proc.stderr
    events = [json.loads(line) for line in proc.stderr.splitlines()]  # every line is one JSON document
    return JsonRun(events, cache, json.loads(proc.stdout))


def tasks(run: JsonRun) -> dict[int, tuple[dict[str, Any], dict[str, Any]]]:
    """id -> (start, done)."""
    started = {e["id"]: e for e in run.events if e["event"] == "start"}
    ended = {e["id"]: e for e in run.events if e["event"] == "done"}
    return {i: (started[i], ended[i]) for i in started}


def test_json_events_pair_up(json_run: JsonRun) -> None:
    kinds = {e["event"] for e in json_run.events}
    assert kinds <= {"step", "start", "advance", "done"} and {"step", "start", "done"} <= kinds
    starts = [e["id"] for e in json_run.events if e["event"] == "start"]
    dones = [e["id"] for e in json_run.events if e["event"] == "done"]
    assert len(starts) == len(set(starts)) and sorted(starts) == sorted(dones)
    open_ids: set[int] = set()
    for e in json_run.events:
        if e["event"] == "start":
            open_ids.add(e["id"])
        elif e["event"] == "advance":
            assert e["id"] in open_ids, f"advance outside its task: {e}"
        elif e["event"] == "done":
            open_ids.remove(e["id"])
            assert e["ok"], f"a task failed in a successful run: {e}"
    steps = [e["message"] for e in json_run.events if e["event"] == "step"]
    assert "reading the image's files" in steps


def test_json_layer_reads_are_the_registry_layer_sizes(json_run: JsonRun, json_image: str) -> None:
    manifest = skopeo_raw(json_image)
    layers = {layer["digest"].split(":")[1][:12]: layer["size"] for layer in manifest["layers"]}
    reads = [(s, d) for s, d in tasks(json_run).values() if s["kind"] == "layer-read"]
    assert reads
    for start, done in reads:
        digest = start["label"].split()[-1]
        assert start["total"] == layers[digest], start
        assert done["bytes"] == layers[digest], (start, done)


def test_json_downloads_are_what_landed_in_the_cache(json_run: JsonRun, json_image: str) -> None:
    downloads = [(s, d) for s, d in tasks(json_run).values() if s["kind"] == "download" and s["total"] is not None]
    assert any(s["label"].endswith(".deb") for s, _ in downloads)
    assert any("Packages" in s["label"] for s, _ in downloads)
    for start, done in downloads:
        assert done["bytes"] == start["total"], (start, done)
    files = [p for p in (json_run.cache / "sha256").rglob("*") if p.is_file()]
    for f in files:  # the cache's own guarantee, read back here: each file is what its name says
        assert hashlib.sha256(f.read_bytes()).hexdigest() == f.name
    # The patch layer is kept in the cache too (built once per identical input): not a download.
    new_layer = skopeo_raw(json_image.replace(":1.0", ":1.0-json"))["layers"][-1]["digest"].split(":")[1]
    assert new_layer in {f.name for f in files}
    files = [f for f in files if f.name != new_layer]
    assert sorted(d["bytes"] for _, d in downloads) == sorted(f.stat().st_size for f in files)
    debs = {s["label"] for s, _ in downloads if s["label"].endswith(".deb")}
    assert len(debs) == len(json_run.result["updates"])


def test_json_push_and_layer_write_match_the_pushed_image(json_run: JsonRun, json_image: str,
                                                          anon_registry: RunningRegistry) -> None:
    patched_ref = json_image.replace(":1.0", ":1.0-json")
    manifest = skopeo_raw(patched_ref)
    blobs = {b["digest"].split(":")[1][:12]: b["size"] for b in [manifest["config"], *manifest["layers"]]}
    pushes = {s["label"].split()[-1]: (s, d) for s, d in tasks(json_run).values() if s["kind"] == "push"}
    assert set(pushes) == set(blobs)
    new_layer = manifest["layers"][-1]
    for short, (start, done) in pushes.items():
        assert start["total"] == blobs[short]
        # The base layer is already in the repository; the config and the new layer are uploaded whole (a new layer
        # streamed while it was written: its bytes count all the same).
        assert done["bytes"] == (0 if done["note"] in ("exists", "mounted") else blobs[short]), (start, done)
    # Streamed once the file passed STREAM_START as it was written (told as the writer flushes, whole gzip blocks
    # at a time): below it never, well above it always.
    note = pushes[new_layer["digest"].split(":")[1][:12]][1]["note"]
    if new_layer["size"] < STREAM_START:
        assert note == ""
    elif new_layer["size"] >= 3 * STREAM_START:
        assert note == "streamed while written"
    else:
        assert note in ("", "streamed while written")
    # The layer writer counted the file contents it put in: the pushed layer's regular files, as tar reads them.
    url = f"{anon_registry.url}/v2/progress-json/blobs/{new_layer['digest']}"
    # gzip.GzipFile reads every member of the layer's multi-member gzip stream (tarfile's "r|gz" only the first).
    with urllib.request.urlopen(url) as resp, gzip.GzipFile(fileobj=resp) as gz, tarfile.open(fileobj=gz,
                                                                                               mode="r|") as tar:
        content = sum(m.size for m in tar if m.isreg())
    (start, done), = [(s, d) for s, d in tasks(json_run).values() if s["kind"] == "layer-write"]
    assert start["total"] == done["bytes"] == content


# ----------------------------------------------------------------------------------------------------- plain


def test_plain_when_piped(json_run: JsonRun, image: str, report: Path, tmp_path: Path) -> None:
    # json_run's cache holds the packages but not this run's layer records or patch layer (copied without them):
    # the lines are the steps, the layer read, write and push, and the index fetches.
    cache = tmp_path / "cache"
    shutil.copytree(json_run.cache / "sha256", cache / "sha256")
    proc = copa("patch", "-i", image, "-r", str(report), "-t", "1.0-plain", "--push", "--cache-dir", str(cache))
    assert proc.returncode == 0, proc.stderr
    assert "\r" not in proc.stderr and "\x1b" not in proc.stderr
    lines = proc.stderr.splitlines()
    assert all(line.startswith("copa: ") for line in lines), proc.stderr
    assert "copa: reading the image's files" in lines
    layer = skopeo_raw(image)["layers"][0]
    read = [line for line in lines if line.startswith("copa: read layer 1/1 ")]
    assert read and all(f"({layer['size'] / 1e6:.1f} MB in " in line for line in read), proc.stderr
    assert any(re.fullmatch(r"copa: wrote patch layer \(\d+\.\d MB in \d+\.\ds\)", line) for line in lines)
    assert any(re.fullmatch(r"copa: pushed blob [0-9a-f]{12} \(0 B in \d+\.\ds, exists\)", line) for line in lines)
    assert not any(re.match(r"copa: downloaded \S+\.deb \(", line) for line in lines), proc.stderr


# ----------------------------------------------------------------------------------------------------- quiet


def test_quiet_prints_nothing_on_success(json_run: JsonRun, image: str, report: Path) -> None:
    proc = copa("patch", "-i", image, "-r", str(report), "--dry-run", "--progress", "quiet", "--cache-dir",
                str(json_run.cache))
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    assert "would update" in proc.stdout


def test_quiet_prints_one_line_on_error(image: str, report: Path, tmp_path: Path) -> None:
    missing = image.replace("progress:1.0", "progress-missing:1.0")
    proc = copa("patch", "-i", missing, "-r", str(report), "--dry-run", "--progress", "quiet", "--cache-dir",
                str(tmp_path))
    assert proc.returncode == 4, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("copa: error: "), proc.stderr


def test_json_advances_are_throttled(json_run: JsonRun) -> None:
    # At most one advance per task every 0.2 s (and none after its done): the stream stays small for big layers.
    for start, done in tasks(json_run).values():
        advances = [e for e in json_run.events if e["event"] == "advance" and e["id"] == start["id"]]
        assert len(advances) <= done["seconds"] / 0.2 + 1, (start, len(advances), done)


# ----------------------------------------------------------------------------------------------------- events


class Collect:
    """A sink keeping every event (the events module's own interface; no renderer involved)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.seen: list[tuple[str, str | None, str]] = []

    def step(self, message: str, scope: str | None) -> None:
        with self.lock:
            self.seen.append(("step", scope, message))

    def start(self, task: TaskInfo) -> None:
        with self.lock:
            self.seen.append(("start", task.scope, task.label))

    def advance(self, task: TaskInfo, completed: int) -> None:
        pass

    def done(self, task: TaskInfo, finish: Finish) -> None:
        with self.lock:
            self.seen.append(("done", task.scope, f"{task.label} {finish.completed} {finish.ok} {finish.note}"))


def test_scope_reaches_pool_threads_through_carry() -> None:
    sink = Collect()

    def work(name: str) -> None:
        events.step(f"step {name}")
        with events.task(events.Kind.DOWNLOAD, name, 3) as task:
            task.advance(3)

    with events.use(sink), events.scope("linux/arm64"), ThreadPoolExecutor(max_workers=2) as pool:
        carried = [pool.submit(events.carry(work), "a"), pool.submit(events.carry(work), "b")]
        bare = pool.submit(work, "c")  # without carry the pool thread has no scope: the reason carry exists
        for f in [*carried, bare]:
            f.result()
    starts = {label: scope for kind, scope, label in sink.seen if kind == "start"}
    steps = {label: scope for kind, scope, label in sink.seen if kind == "step"}
    assert starts == {"a": "linux/arm64", "b": "linux/arm64", "c": None}
    assert steps == {"step a": "linux/arm64", "step b": "linux/arm64", "step c": None}
    assert ("done", "linux/arm64", "a 3 True ") in sink.seen


def test_failed_task_and_closed_generator() -> None:
    sink = Collect()

    def reader() -> Iterator[int]:
        with events.task(events.Kind.LAYER_READ, "gen", 10) as task:
            for i in range(10):
                task.advance(1)
                yield i

    with events.use(sink):
        gen = reader()
        next(gen)
        gen.close()  # the consumer stopped reading: not a failure
        with pytest.raises(ValueError), events.task(events.Kind.PUSH, "bad", 5):
            raise ValueError("boom")
    assert ("done", None, "gen 1 True stopped early") in sink.seen
    assert ("done", None, "bad 0 False failed") in sink.seen


def test_without_a_sink_nothing_is_wrapped() -> None:
    stream = io.BytesIO(b"abc")
    task = events.task(events.Kind.DOWNLOAD, "x", 3)
    assert task is events.NO_TASK and events.counted(stream, task) is stream


def test_json_platforms_carry_their_scope(tmp_path: Path) -> None:
    """Platforms patched concurrently: each event names its platform, including downloads from pool threads, and
    each platform's layer read is its own manifest's layer (the layout's blobs, read here, are the oracle)."""
    layout, ref = multiplatform.multiplatform_layout()

    def blob(digest: str) -> dict[str, Any]:
        doc: dict[str, Any] = json.loads((layout / "blobs" / "sha256" / digest.split(":")[1]).read_bytes())
        return doc

    top = json.loads((layout / "index.json").read_text())
    entry = next(m for m in top["manifests"] if m["annotations"]["org.opencontainers.image.ref.name"] == ref)
    layers: dict[str, dict[str, int]] = {}
    for m in blob(entry["digest"])["manifests"]:
        p = m["platform"]
        if p["os"] != "unknown":
            name = "/".join(x for x in (p["os"], p["architecture"], p.get("variant", "")) if x)
            layers[name] = {d["digest"].split(":")[1][:12]: d["size"] for d in blob(m["digest"])["layers"]}
    proc = copa("patch", "-i", f"oci:{layout}:{ref}", "--dry-run", "--progress", "json", "--cache-dir",
                str(tmp_path / "cache"))
    assert proc.returncode == 0, proc.stderr
    run = JsonRun([json.loads(line) for line in proc.stderr.splitlines()], tmp_path, {})
    scoped = [e for e in run.events if e["event"] in ("step", "start")]
    assert {e["scope"] for e in scoped} == set(layers), scoped
    for start, done in tasks(run).values():
        if start["kind"] == "layer-read":
            assert start["total"] == done["bytes"] == layers[start["scope"]][start["label"].split()[-1]], start
    downloads = {e["scope"] for e in run.events if e["event"] == "start" and e["kind"] == "download"}
    assert downloads == {p for p in layers if p != "linux/ppc64le"}  # ppc64le is scratch: nothing to download
    for platform in downloads:  # each platform's own index (binary-ARCH), under its own scope
        arch = {"linux/amd64": "amd64", "linux/arm64": "arm64", "linux/arm/v7": "armhf", "linux/386": "i386"}[platform]
        assert any(e["event"] == "start" and e["scope"] == platform and f"binary-{arch}/Packages" in e["label"]
                   for e in run.events), platform
