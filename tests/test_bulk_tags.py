"""Tag discovery and the bulk plan against a real registry (Debian's docker-registry on 127.0.0.1).

Oracles: `skopeo list-tags` for the tag list (directly, and through a paginating front that also skopeo follows);
`skopeo inspect` for the digests reports name; Copacetic's own expectations for its strategies (the tables of
pkg/bulk/discover_test.go, replayed on a real repository holding those tags) and Masterminds/semver v3.4.0's for
which tags parse and how they order (version_test.go TestNewVersion, loose mode, and TestCompare).

docker-registry 2.8 answers a tag list in one page whatever `n` says, so pagination is exercised through a small
front that pages the real registry's list as distribution v3 does (`?n=&last=`, `Link: <...>; rel="next"`); the
same front injects the faults no real registry produces on demand (a loop, a link to another host).
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import http.server
import json
import subprocess
import threading
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests

from copa.bulk.config import TagStrategy, parse_config
from copa.bulk.plan import jobs, plan
from copa.bulk.tags import next_patch_tag, order_tags, outputs_of, parse_semver, select_tags
from copa.errors import NotFoundError, RegistryError, ReportError, UsageError
from copa.oci.reference import Reference
from copa.oci.registry import RegistryClient, RegistryOptions, list_tags
from tests.support.registry import PASSWORD, USER, RunningRegistry

ROOT = Path(__file__).resolve().parents[1]
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


# --- filling the registry -------------------------------------------------------------------------------------


@dataclass
class Filler:
    """Puts tags into repositories of a registry: one skopeo copy of the tiny image per repository, then each tag
    a manifest PUT of it with an annotation naming the tag, so every tag has its own digest."""

    host: str
    layout: Path
    session: requests.Session = field(default_factory=requests.Session)
    seeded: dict[str, tuple[dict[str, Any], str]] = field(default_factory=dict)
    creds: tuple[str, str] | None = None

    def tag(self, repo: str, *tags: str) -> None:
        if repo not in self.seeded:
            creds = ["--dest-creds", f"{self.creds[0]}:{self.creds[1]}"] if self.creds else []
            subprocess.run(["skopeo", "copy", "-q", "--dest-tls-verify=false", *creds, f"oci:{self.layout}:t",
                            f"docker://{self.host}/{repo}:seed"], check=True, capture_output=True)
            resp = self.session.get(f"http://{self.host}/v2/{repo}/manifests/seed", auth=self.creds,
                                    headers={"Accept": OCI_MANIFEST})
            resp.raise_for_status()
            self.seeded[repo] = (resp.json(), resp.headers["Content-Type"])
        doc, media_type = self.seeded[repo]
        for tag in tags:
            body = json.dumps({**doc, "annotations": {"org.example.tag": tag}}).encode()
            self.session.put(f"http://{self.host}/v2/{repo}/manifests/{tag}", data=body, auth=self.creds,
                             headers={"Content-Type": media_type}).raise_for_status()


@pytest.fixture(scope="module")
def filler(anon_registry: RunningRegistry, tiny_layout: Path) -> Filler:
    return Filler(anon_registry.host, tiny_layout)


@pytest.fixture(scope="module")
def client() -> Iterator[RegistryClient]:
    with RegistryClient(RegistryOptions(retries=0)) as c:
        yield c


def skopeo_tags(host: str, repo: str, *extra: str) -> list[str]:
    out = subprocess.run(["skopeo", "list-tags", "--tls-verify=false", *extra, f"docker://{host}/{repo}"],
                         check=True, capture_output=True, text=True).stdout
    tags: list[str] = json.loads(out)["Tags"]
    return tags


def skopeo_digest(host: str, repo: str, tag: str) -> str:
    out = subprocess.run(["skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{host}/{repo}:{tag}"],
                         check=True, capture_output=True).stdout
    return "sha256:" + hashlib.sha256(out).hexdigest()


# --- a paginating front ---------------------------------------------------------------------------------------


@dataclass
class Pager:
    """Forwards to the registry; answers GET .../tags/list[?n=N][&last=T] with one page (N, else 10) of the registry's
    list, sorted as distribution v3 sorts it, and a Link to the next page. `fault`: "loop" links back to the first page,
    "elsewhere" links to another host."""

    upstream: str
    fault: str = ""
    pages: list[str] = field(default_factory=list)
    server: http.server.ThreadingHTTPServer | None = None

    @property
    def host(self) -> str:
        assert self.server is not None
        return f"127.0.0.1:{self.server.server_address[1]}"

    def start(self) -> Pager:
        pager = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                url = urllib.parse.urlsplit(self.path)
                query = urllib.parse.parse_qs(url.query)
                conn = http.client.HTTPConnection(pager.upstream, timeout=30)
                headers = {k: v for k, v in self.headers.items() if k.lower() == "authorization"}
                if not url.path.endswith("/tags/list"):
                    conn.request("GET", self.path, headers=headers)
                    resp = conn.getresponse()
                    body = resp.read()
                    self.send_response(resp.status)
                    for k, v in resp.getheaders():
                        if k.lower() not in ("connection", "transfer-encoding", "content-length"):
                            self.send_header(k, v)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                pager.pages.append(self.path)
                conn.request("GET", url.path, headers=headers)
                resp = conn.getresponse()
                doc = json.loads(resp.read())
                n = int(query.get("n", ["10"])[0])  # pages of 10 unless asked otherwise, as hosted registries page
                last = query.get("last", [""])[0]
                rest = [t for t in sorted(doc["tags"] or []) if t > last]
                page, more = rest[:n], len(rest) > n
                body = json.dumps({"name": doc["name"], "tags": page}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                if more:
                    nxt = f"{url.path}?last={urllib.parse.quote(page[-1])}&n={n}"
                    if pager.fault == "loop":
                        nxt = self.path
                    elif pager.fault == "elsewhere":
                        nxt = f"http://127.0.0.2:1{nxt}"
                    self.send_header("Link", f'<{nxt}>; rel="next"')
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()


@pytest.fixture
def pager(anon_registry: RunningRegistry) -> Iterator[Pager]:
    p = Pager(anon_registry.host).start()
    yield p
    p.stop()


MANY = [f"1.{i}.{j}" for i in range(12) for j in range(10)] + ["latest", "v2.0.0", "bookworm"]


def test_list_tags_follows_every_page(filler: Filler, pager: Pager, client: RegistryClient) -> None:
    filler.tag("bulk/many", *MANY)
    direct = skopeo_tags(filler.host, "bulk/many")
    assert len(direct) == len(MANY) + 1  # and the seed tag
    paged = list_tags(client, Reference.parse(f"{pager.host}/bulk/many"), page_size=10)
    pages = (len(direct) + 9) // 10
    assert len(pager.pages) == pages and all("n=10" in p for p in pager.pages)
    # skopeo (asking for no page size) follows the same Link headers: the same tags in the same order.
    assert paged == skopeo_tags(pager.host, "bulk/many")
    assert len(pager.pages) == 2 * pages
    assert sorted(paged) == sorted(direct)
    # The registry's one page, read without the front, is the same list.
    assert list_tags(client, Reference.parse(f"{filler.host}/bulk/many")) == direct


def test_list_tags_bounds(filler: Filler, pager: Pager, client: RegistryClient) -> None:
    filler.tag("bulk/many", *MANY)
    with pytest.raises(RegistryError, match="more than 50 tags"):
        list_tags(client, Reference.parse(f"{pager.host}/bulk/many"), page_size=10, limit=50)
    pager.fault = "loop"
    with pytest.raises(RegistryError, match="same tag list page"):
        list_tags(client, Reference.parse(f"{pager.host}/bulk/many"), page_size=10)
    pager.fault = "elsewhere"
    with pytest.raises(RegistryError, match=r"another host \(127.0.0.2:1\)"):
        list_tags(client, Reference.parse(f"{pager.host}/bulk/many"), page_size=10)
    with pytest.raises(NotFoundError, match="no tag list in repository bulk/nothing-here"):
        list_tags(client, Reference.parse(f"{filler.host}/bulk/nothing-here"))


def test_list_tags_with_basic_auth(basic_registry: RunningRegistry, tiny_layout: Path, tmp_path: Path) -> None:
    f = Filler(basic_registry.host, tiny_layout, creds=(USER, PASSWORD))
    f.tag("bulk/private", "1.0", "1.1")
    auth = tmp_path / "auth.json"
    token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    auth.write_text(json.dumps({"auths": {basic_registry.host: {"auth": token}}}))
    with RegistryClient(RegistryOptions(auth_file=str(auth), retries=0)) as c:
        tags = list_tags(c, Reference.parse(f"{basic_registry.host}/bulk/private"))
    assert tags == skopeo_tags(basic_registry.host, "bulk/private", "--creds", f"{USER}:{PASSWORD}")


# --- semver as Masterminds/semver v3.4.0 reads it ------------------------------------------------------------

# version_test.go TestNewVersion, "With loose NewVersion": (version, NewVersion returns an error)
NEW_VERSION = [
    ("1.2.3", False), ("1.2.3-alpha.01", True), ("1.2.3+test.01", False), ("1.2.3-alpha.-1", False),
    ("v1.2.3", False), ("1.0", False), ("v1.0", False), ("1", False), ("v1", False), ("1.2.beta", True),
    ("v1.2.beta", True), ("foo", True), ("1.2-5", False), ("v1.2-5", False), ("1.2-beta.5", False),
    ("v1.2-beta.5", False), ("\n1.2", True), ("\nv1.2", True), ("1.2.0-x.Y.0+metadata", False),
    ("v1.2.0-x.Y.0+metadata", False), ("1.2.0-x.Y.0+metadata-width-hypen", False),
    ("v1.2.0-x.Y.0+metadata-width-hypen", False), ("1.2.3-rc1-with-hypen", False), ("v1.2.3-rc1-with-hypen", False),
    ("1.2.3.4", True), ("v1.2.3.4", True), ("1.2.2147483648", False), ("1.2147483648.3", False),
    ("2147483648.3.0", False), ("12.3.4.1234", True), ("12.23.4.1234", True), ("12.3.34.1234", True),
    ("20221209-update-renovatejson-v4", False), ("1.1.2+.123", True), ("1.0.0-alpha_beta", True),
    ("1.0.0-alpha..", True), ("1.0.0-alpha..1", True), ("9.8.7+meta+meta", True),
    ("1.2.31----RC-SNAPSHOT.12.09.1--.12+788", True), ("01.1.1", False), ("1.01.1", False), ("1.1.01", False),
]


@pytest.mark.parametrize(("version", "error"), NEW_VERSION)
def test_semver_parse_as_masterminds(version: str, error: bool) -> None:
    assert (parse_semver(version) is None) == error


# version_test.go TestCompare, the pairs without pre-releases (Copacetic drops pre-releases before ordering).
@pytest.mark.parametrize(("a", "b", "expected"), [
    ("1.2.3", "1.5.1", -1), ("2.2.3", "1.5.1", 1), ("2.2.3", "2.2.2", 1), ("1.3", "1.1.4", 1),
    ("1.2+bar", "1.2+baz", 0),
])
def test_semver_compare_as_masterminds(a: str, b: str, expected: int) -> None:
    va, vb = parse_semver(a), parse_semver(b)
    assert va is not None and vb is not None
    assert (va.key > vb.key) - (va.key < vb.key) == expected


def test_order_semver_then_lexical() -> None:
    # Numeric, not text order; "v" and missing parts coerced; leading zeros allowed (calver such as 20.04).
    assert order_tags(["1.10.0", "1.9.0", "v1.11", "20.04", "2", "1.2.0-rc1", "latest"]) == \
        ["1.9.0", "1.10.0", "v1.11", "2", "20.04"]
    # No tag is semver at all: lexical (the docs' fallback), which is date order for dated tags.
    dated = ["bookworm-20240110", "bookworm-20231218", "bookworm-20240211"]
    assert order_tags(dated) == sorted(dated)
    # A semver pre-release is semver: no fallback, and nothing stable to order.
    assert order_tags(["1.0.0-rc1", "nightly"]) == []


# --- strategies on a real repository: Copacetic's discover_test.go tables -------------------------------------

COPACETIC_MOCK_TAGS = ["1.10.1", "1.9.5", "1.10.0", "1.10.2", "latest", "1.8.0", "1.10.3-alpine", "1.11.0-beta"]
LATEST_MOCK_TAGS = ["2.1.0", "3.0.0-alpha", "latest", "2.0.0", "2.1.1"]


def _config(images: str, head: str = "") -> Any:
    text = f"apiVersion: copa.sh/v1alpha1\nkind: PatchConfig\n{head}images:\n{images}"
    return parse_config(text.encode(), "bulk.yaml")


def _sources(found: list[Any]) -> list[str]:
    return [job.source.rsplit(":", 1)[1] for job in found]


@pytest.mark.parametrize(("tags", "expected"), [
    ("{strategy: pattern, pattern: '^1\\.10\\.[0-9]+$'}", ["1.10.0", "1.10.1", "1.10.2"]),
    ("{strategy: pattern, pattern: '^1\\.10\\.[0-9]+$', maxTags: 2}", ["1.10.1", "1.10.2"]),
    ("{strategy: pattern, pattern: '^1\\.10\\.[0-9]+$', exclude: ['1.10.1']}", ["1.10.0", "1.10.2"]),
    ("{strategy: pattern, pattern: '^1\\.11\\..*$'}", []),  # pre-releases are not matched
    ("{strategy: pattern, pattern: 'latest'}", ["latest"]),  # Copacetic: [] (the docs' lexical fallback here)
    ("{strategy: pattern, pattern: '1\\.10'}", ["1.10.0", "1.10.1", "1.10.2"]),  # searched, not anchored
])
def test_copacetic_pattern_table(filler: Filler, client: RegistryClient, tags: str, expected: list[str]) -> None:
    filler.tag("bulk/copacetic", *COPACETIC_MOCK_TAGS)
    config = _config(f"  - name: t\n    image: {filler.host}/bulk/copacetic\n    tags: {tags}\n")
    assert _sources(jobs(config, client)) == expected


def test_copacetic_latest_table(filler: Filler, client: RegistryClient) -> None:
    filler.tag("bulk/latest", *LATEST_MOCK_TAGS)
    config = _config(f"  - name: t\n    image: {filler.host}/bulk/latest\n    tags: {{strategy: latest}}\n"
                     f"  - name: u\n    image: {filler.host}/bulk/latest\n"
                     f"    tags: {{strategy: latest, exclude: ['2.1.1']}}\n"
                     "    target: {tag: '{{ .SourceTag }}-u'}\n")
    result = plan(config, client)
    assert [_sources(list(i.jobs)) for i in result.images] == [["2.1.1"], ["2.1.0"]]


def test_list_strategy_skips_missing_tags(filler: Filler, client: RegistryClient) -> None:
    filler.tag("bulk/listed", "3.9.18", "3.11.7")
    config = _config(f"  - name: py\n    image: {filler.host}/bulk/listed\n"
                     "    tags: {strategy: list, list: [3.9.18, 3.10.13, 3.11.7]}\n"
                     "    platforms: [linux/amd64, linux/arm64]\n")
    (image,) = plan(config, client).images
    assert _sources(list(image.jobs)) == ["3.9.18", "3.11.7"] and image.missing == ("3.10.13",)
    assert all(job.platforms == ("linux/amd64", "linux/arm64") for job in image.jobs)
    assert image.jobs[0].target == f"{filler.host}/bulk/listed:3.9.18-patched"


def test_own_results_are_not_swept_again(filler: Filler, client: RegistryClient,
                                         other_registry: RunningRegistry) -> None:
    filler.tag("bulk/dated", "bookworm-20240110", "bookworm-20240211", "bookworm-20240110-patched",
               "bookworm-20240110-patched-1", "bookworm-20240110-patched-arm-v7")
    image = (f"  - name: d\n    image: {filler.host}/bulk/dated\n"
             "    tags: {strategy: pattern, pattern: '^bookworm-'}\n")
    found = jobs(_config(image), client)
    assert [(j.source.rsplit(":", 1)[1], j.target.rsplit(":", 1)[1]) for j in found] == [
        ("bookworm-20240110", "bookworm-20240110-patched"), ("bookworm-20240211", "bookworm-20240211-patched")]
    # Patched into another registry, the source repository's tags are all sources.
    elsewhere = jobs(_config(image, f"target: {{registry: '{other_registry.host}/mirror'}}\n"), client)
    assert len(elsewhere) == 5
    assert elsewhere[0].target.startswith(f"{other_registry.host}/mirror/dated:")
    assert outputs_of(["a", "a-p", "a-p-2", "a-p-s390x", "a-p-x"], lambda t: f"{t}-p") == {"a-p", "a-p-2", "a-p-s390x"}


def test_select_without_candidates() -> None:
    assert select_tags(TagStrategy("pattern", "^2\\."), ["1.0"]).note.startswith("no tag matches")
    assert select_tags(TagStrategy("latest", exclude=("1.0",)), ["1.0"]).note == "every candidate tag is excluded"
    assert select_tags(TagStrategy("latest"), ["nightly-rc"]).tags == ("nightly-rc",)
    assert select_tags(TagStrategy("latest"), []).note == "the repository has no tags"


def test_targets_and_their_collisions(filler: Filler, client: RegistryClient,
                                      other_registry: RunningRegistry) -> None:
    filler.tag("team-a/redis", "7.2.4")
    filler.tag("team-b/redis", "7.2.4")
    images = (f"  - name: a\n    image: {filler.host}/team-a/redis\n    tags: {{strategy: latest}}\n"
              f"  - name: b\n    image: {filler.host}/team-b/redis\n    tags: {{strategy: latest}}\n")
    head = f"target: {{registry: '{other_registry.host}/fleet/', tag: 'v{{{{ .SourceTag }}}}-fixed'}}\n"
    with pytest.raises(UsageError, match=r"a \(.*team-a/redis:7.2.4\) and b .* would both be written to "
                                         rf"{other_registry.host}/fleet/redis:v7.2.4-fixed"):
        jobs(_config(images, head), client)
    images += f"    target: {{registry: '{other_registry.host}/b'}}\n"
    a, b = jobs(_config(images, head), client)
    assert (a.target, b.target) == (f"{other_registry.host}/fleet/redis:v7.2.4-fixed",
                                    f"{other_registry.host}/b/redis:v7.2.4-fixed")


def test_discovery_failure_is_kept_per_image(filler: Filler, client: RegistryClient) -> None:
    filler.tag("bulk/there", "1.0.0")
    config = _config(f"  - name: gone\n    image: {filler.host}/bulk/not-there\n    tags: {{strategy: latest}}\n"
                     f"  - name: there\n    image: {filler.host}/bulk/there\n    tags: {{strategy: latest}}\n")
    result = plan(config, client)
    assert [(n, type(e)) for n, e in result.errors] == [("gone", NotFoundError)]
    assert _sources(result.jobs) == ["1.0.0"]
    with pytest.raises(NotFoundError, match="bulk/not-there"):
        jobs(config, client)


# --- reports matched to jobs ------------------------------------------------------------------------------------


def _trivy(artifact: str, digests: list[str], arch: str = "amd64") -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((ROOT / "fixtures/reports/trivy-debian-mixed.json").read_text())
    doc["ArtifactName"] = artifact
    doc["Metadata"]["RepoDigests"] = digests
    doc["Metadata"]["ImageConfig"] = {"architecture": arch, "os": "linux"}
    return doc


def _grype(user_input: str, digests: list[str]) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((ROOT / "fixtures/reports/grype/grype-debian-mixed.json").read_text())
    doc["source"]["target"]["userInput"] = user_input
    doc["source"]["target"]["repoDigests"] = digests
    return doc


def test_reports_matched_by_name_digest_and_directory(filler: Filler, client: RegistryClient, tmp_path: Path) -> None:
    filler.tag("bulk/reported", "1.0.0", "1.1.0", "1.2.0", "1.3.0")
    host = filler.host
    config = _config(f"  - name: r\n    image: {host}/bulk/reported\n    tags: {{strategy: pattern, pattern: '.'}}\n")
    d = tmp_path / "reports"
    (d / "multi").mkdir(parents=True)
    # By name, as `trivy image HOST/REPO:TAG` writes ArtifactName.
    (d / "a.json").write_text(json.dumps(_trivy(f"{host}/bulk/reported:1.0.0", [])))
    # By digest only (Grype given REPO@DIGEST); the digest as skopeo computes it.
    digest = skopeo_digest(host, "bulk/reported", "1.1.0")
    (d / "b.json").write_text(json.dumps(_grype(f"{host}/bulk/reported@{digest}", [f"{host}/bulk/reported@{digest}"])))
    # Grype's userInput may keep Syft's source scheme.
    (d / "s.json").write_text(json.dumps(_grype(f"registry:{host}/bulk/reported:1.3.0", [])))
    # A directory of per-platform reports of one image.
    (d / "multi" / "amd64.json").write_text(json.dumps(_trivy(f"{host}/bulk/reported:1.2.0", [])))
    (d / "multi" / "arm64.json").write_text(json.dumps(_trivy(f"{host}/bulk/reported:1.2.0", [], "arm64")))
    # A report of an image the config does not patch.
    (d / "other.json").write_text(json.dumps(_trivy(f"{host}/bulk/elsewhere:1.0", [])))
    result = plan(config, client, reports=d)
    assert {j.source.rsplit(":", 1)[1]: j.report for j in result.jobs} == {
        "1.0.0": str(d / "a.json"), "1.1.0": str(d / "b.json"), "1.2.0": str(d / "multi"), "1.3.0": str(d / "s.json")}
    assert result.unmatched_reports == (str(d / "other.json"),)

    (d / "s.json").unlink()  # 1.3.0 has no report: update-all
    assert [j.report for j in plan(config, client, reports=d).jobs][3] is None
    (d / "c.json").write_text(json.dumps(_trivy(f"{host}/bulk/reported:1.0.0", [])))
    with pytest.raises(ReportError, match=r"a.json and .*c.json are both reports for .*reported:1.0.0"):
        plan(config, client, reports=d)
    (d / "c.json").unlink()
    (d / "multi" / "arm64.json").write_text(json.dumps(_trivy(f"{host}/bulk/reported:1.0.0", [], "arm64")))
    with pytest.raises(ReportError, match="names another image than the other reports in"):
        plan(config, client, reports=d)
    (d / "multi" / "arm64.json").write_text("{}")
    with pytest.raises(ReportError, match="unknown report format"):
        plan(config, client, reports=d)
    with pytest.raises(ReportError, match="is not a directory"):
        plan(config, client, reports=d / "a.json")


# --- Copacetic's re-patch tags (pkg/bulk/skip_test.go) ------------------------------------------------------------

# TestNextPatchTag: (existing tags, next tag) for base 1.25.3-patched / 1.25.3-fixed
NEXT_PATCH_TAG = [
    ("1.25.3-patched", [], "1.25.3-patched"),
    ("1.25.3-patched", ["1.25.3-patched"], "1.25.3-patched-1"),
    ("1.25.3-patched", ["1.25.3-patched", "1.25.3-patched-1"], "1.25.3-patched-2"),
    ("1.25.3-patched", ["1.25.3-patched", "1.25.3-patched-1", "1.25.3-patched-3"], "1.25.3-patched-4"),
    ("1.25.3-patched", ["1.25.3-patched-2", "1.25.3-patched-5"], "1.25.3-patched-6"),
    ("1.25.3-fixed", ["1.25.3-fixed", "1.25.3-fixed-1"], "1.25.3-fixed-2"),
    # TestDiscoverExistingPatchTags's repositories, whose discovered tags feed nextPatchTag:
    ("1.25.3-patched", ["1.25.3", "1.25.2-patched", "latest"], "1.25.3-patched"),
    ("1.25.3-patched", ["1.25.3-patched-10", "1.25.3-patched-2", "1.25.3-patched-1", "1.25.3-patched"],
     "1.25.3-patched-11"),
    ("1.25.3-fixed", ["1.25.3-fixed", "1.25.3-fixed-1", "1.25.3-patched"], "1.25.3-fixed-2"),
    ("3.18.0-patched", ["3.18.0-patched", "3.18.0-patched-386", "3.18.0-patched-amd64", "3.18.0-patched-arm64"],
     "3.18.0-patched-1"),
]


@pytest.mark.parametrize(("base", "existing", "expected"), NEXT_PATCH_TAG)
def test_next_patch_tag_as_copacetic(base: str, existing: list[str], expected: str) -> None:
    assert next_patch_tag(base, existing) == expected


def test_versioned_targets(filler: Filler, client: RegistryClient, other_registry: RunningRegistry,
                           tiny_layout: Path) -> None:
    filler.tag("bulk/alpine", "3.18.0", "3.19.0")
    Filler(other_registry.host, tiny_layout).tag(
        "fleet/alpine", "3.18.0-patched", "3.18.0-patched-1", "3.18.0-patched-386", "3.18.0-patched-arm64")
    config = _config(f"  - name: a\n    image: {filler.host}/bulk/alpine\n"
                     "    tags: {strategy: list, list: [3.18.0, 3.19.0]}\n"
                     f"    target: {{registry: '{other_registry.host}/fleet'}}\n"
                     f"  - name: b\n    image: {filler.host}/bulk/alpine\n    tags: {{strategy: latest}}\n"
                     f"    target: {{registry: '{other_registry.host}/nothing-yet'}}\n")
    found = jobs(config, client, versioned=True)
    assert [j.target for j in found] == [f"{other_registry.host}/fleet/alpine:3.18.0-patched-2",
                                         f"{other_registry.host}/fleet/alpine:3.19.0-patched",
                                         f"{other_registry.host}/nothing-yet/alpine:3.19.0-patched"]
    assert jobs(config, client)[0].target == f"{other_registry.host}/fleet/alpine:3.18.0-patched"
