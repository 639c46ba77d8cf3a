"""copa.bulk.config: Copacetic's PatchConfig read into values, every bad input a one-line error with its line.

Oracles: the example of Copacetic's bulk-patching docs (fixtures/bulk/copacetic-docs.yaml, as written there) read by
PyYAML's BaseLoader, which keeps every scalar as its text, as yaml.v3 fills Copacetic's Go string fields; the
tag-template cases follow Go text/template's trim markers as its documentation states them.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from copa.bulk.config import (
    DEFAULT_TAG_TEMPLATE,
    MAX_NODES,
    PatchConfig,
    load_config,
    render_tag,
)
from copa.errors import UsageError

ROOT = Path(__file__).resolve().parents[1]
DOCS_EXAMPLE = ROOT / "fixtures" / "bulk" / "copacetic-docs.yaml"

HEAD = "apiVersion: copa.sh/v1alpha1\nkind: PatchConfig\n"


def _as_document(config: PatchConfig) -> dict[str, Any]:
    """The config written back in PatchConfig's shape, with every scalar as text (BaseLoader's view)."""

    def target(t: Any) -> dict[str, str]:
        return {k: v for k, v in (("registry", t.registry), ("tag", t.tag)) if v}

    images = []
    for spec in config.images:
        tags: dict[str, Any] = {"strategy": spec.tags.strategy}
        if spec.tags.pattern:
            tags["pattern"] = spec.tags.pattern
        if spec.tags.max_tags:
            tags["maxTags"] = str(spec.tags.max_tags)
        if spec.tags.list:
            tags["list"] = list(spec.tags.list)
        if spec.tags.exclude:
            tags["exclude"] = list(spec.tags.exclude)
        image: dict[str, Any] = {"name": spec.name, "image": spec.image, "tags": tags}
        if spec.platforms:
            image["platforms"] = list(spec.platforms)
        if target(spec.target):
            image["target"] = target(spec.target)
        images.append(image)
    doc: dict[str, Any] = {"apiVersion": "copa.sh/v1alpha1", "kind": "PatchConfig"}
    if target(config.target):
        doc["target"] = target(config.target)
    doc["images"] = images
    return doc


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "bulk.yaml"
    path.write_text(text)
    return path


def test_copacetic_docs_example_reads_as_yaml_says() -> None:
    config = load_config(DOCS_EXAMPLE)
    assert _as_document(config) == yaml.load(DOCS_EXAMPLE.read_text(), Loader=yaml.BaseLoader)
    nginx, python, alpine = config.images
    # mergeTarget: the image's fields win, the global ones fill in, the default template last.
    assert config.target_for(nginx).registry == "ghcr.io/myorg"
    assert config.target_for(python).registry == "quay.io/special/python"
    assert config.target_for(python).tag == "{{ .SourceTag }}-fixed"
    assert config.target_for(alpine).tag == "{{ .SourceTag }}-patched"
    assert nginx.tags.matches("1.25.3") and not nginx.tags.matches("1.19.0")


def test_fleet_example_reads_as_yaml_says() -> None:
    example = ROOT / "fixtures" / "bulk" / "fleet.yaml"
    config = load_config(example)
    assert _as_document(config) == yaml.load(example.read_text(), Loader=yaml.BaseLoader)


def test_scalars_are_text_as_yaml_v3_reads_them_into_strings(tmp_path: Path) -> None:
    text = HEAD + (
        "images:\n"
        "  - name: 3.10\n"
        "    image: docker.io/library/python\n"
        "    tags: {strategy: list, list: [3.10, 1.20, 010, 1e3, true]}\n"
    )
    config = load_config(_write(tmp_path, text))
    assert _as_document(config) == yaml.load(text, Loader=yaml.BaseLoader)
    assert config.images[0].tags.list == ("3.10", "1.20", "010", "1e3", "true")
    assert config.target_for(config.images[0]).tag == DEFAULT_TAG_TEMPLATE


def test_aliases_within_the_budget_are_read(tmp_path: Path) -> None:
    text = HEAD + (
        "images:\n"
        "  - name: a\n    image: r.example/a\n"
        "    tags: &semver {strategy: pattern, pattern: '^v?[0-9.]+$', maxTags: 2}\n"
        "  - name: b\n    image: r.example/b\n    tags: *semver\n"
    )
    a, b = load_config(_write(tmp_path, text)).images
    assert a.tags.pattern == b.tags.pattern and b.tags.max_tags == 2


def _image(extra: str = "", tags: str = "{strategy: latest}") -> str:
    return f"images:\n  - name: app\n    image: r.example/app\n    tags: {tags}\n{extra}"


# (document, line of the error, words the message must hold)
BAD = [
    pytest.param("kind: PatchConfig\n" + _image(), 1, "required field 'apiVersion'", id="no-apiVersion"),
    pytest.param("apiVersion: copa.sh/v1\nkind: PatchConfig\n" + _image(), 1, "apiVersion: copa.sh/v1alpha1",
                 id="bad-apiVersion"),
    pytest.param("apiVersion: copa.sh/v1alpha1\nkind: Patch\n" + _image(), 2, "kind: PatchConfig", id="bad-kind"),
    pytest.param(HEAD + "image: []\n", 3, "unknown field 'image'", id="unknown-top"),
    pytest.param(HEAD + "images: {}\n", 3, "images must be a list", id="images-mapping"),
    pytest.param(HEAD + "images: []\n", 3, "images is empty", id="images-empty"),
    pytest.param(HEAD + _image(tags="{strategy: pattern, pattern: x, maxtags: 2}"), 6, "unknown field 'maxtags'",
                 id="typo-maxtags"),
    pytest.param(HEAD + _image(tags="{strategy: pattern, pattern: x, maxTags: three}"), 6, "whole number",
                 id="maxTags-text"),
    pytest.param(HEAD + _image(tags="{strategy: pattern, pattern: x, maxTags: -1}"), 6, "negative",
                 id="maxTags-negative"),
    pytest.param(HEAD + _image(tags="{strategy: list, list: '1.0'}"), 6, "must be a list", id="list-scalar"),
    pytest.param(HEAD + _image(tags="{strategy: list, list: [{a: 1}]}"), 6, "must be a string", id="list-item-map"),
    pytest.param(HEAD + _image(tags="{strategy: list, list: ['-bad']}"), 6, "not a valid tag", id="list-bad-tag"),
    pytest.param(HEAD + _image(tags="{strategy: list}"), 6, "non-empty list", id="list-without-list"),
    pytest.param(HEAD + _image(tags="{strategy: pattern}"), 6, "needs a pattern", id="pattern-without-pattern"),
    pytest.param(HEAD + _image(tags="{strategy: pattern, pattern: '^1\\.(2'}"), 6, "not a valid regular expression",
                 id="bad-regex"),
    pytest.param(HEAD + _image(tags="{strategy: pattern, pattern: '^(?!rc).*$'}"), 6, "not in Go's regexp syntax",
                 id="lookahead"),
    pytest.param(HEAD + _image(tags="{strategy: pattern, pattern: '^(a)\\1$'}"), 6, "backreference", id="backref"),
    pytest.param(HEAD + _image(tags="{strategy: pattern, pattern: '^a*+$'}"), 6, "possessive", id="possessive"),
    pytest.param(HEAD + _image(tags="{strategy: newest}"), 6, "unknown: use one of list, pattern, latest",
                 id="bad-strategy"),
    pytest.param(HEAD + _image(tags="{pattern: x}"), 6, "required field 'strategy'", id="no-strategy"),
    pytest.param(HEAD + "images:\n  - name: app\n    tags: {strategy: latest}\n", 4, "required field 'image'",
                 id="no-image"),
    pytest.param(HEAD + "images:\n  - image: r.example/app\n    tags: {strategy: latest}\n", 4,
                 "required field 'name'", id="no-name"),
    pytest.param(HEAD + "images:\n  - name: app\n    image: r.example/app\n", 4, "required field 'tags'",
                 id="no-tags"),
    pytest.param(HEAD + "images:\n  - name: app\n    image: r.example/app:1.0\n    tags: {strategy: latest}\n", 5,
                 "without tag or digest", id="image-with-tag"),
    pytest.param(HEAD + "images:\n  - name: app\n    image: R.example/App\n    tags: {strategy: latest}\n", 5,
                 "invalid repository", id="image-bad-name"),
    pytest.param(HEAD + _image("    platforms: [linux]\n"), 7, "OS/ARCH", id="bad-platform"),
    pytest.param(HEAD + _image("    platforms: linux/amd64\n"), 7, "must be a list", id="platforms-scalar"),
    pytest.param(HEAD + _image("    target: {tag: '{{ .Tag }}'}\n"), 7, "only value is {{ .SourceTag }}",
                 id="template-field"),
    pytest.param(HEAD + _image("    target: {tag: '{{ .SourceTag }}/x'}\n"), 7, "not a valid tag",
                 id="template-bad-tag"),
    pytest.param(HEAD + _image("    target: {registry: 'ghcr.io/org:1'}\n"), 7, "is not a registry/namespace prefix",
                 id="target-registry-tag"),
    pytest.param(HEAD + _image("    target: {bucket: x}\n"), 7, "unknown field 'bucket'", id="target-unknown"),
    pytest.param(HEAD + _image() + "  - name: app\n    image: r.example/other\n    tags: {strategy: latest}\n", 7,
                 "already used on line 4", id="duplicate-name"),
    pytest.param(HEAD + "kind: PatchConfig\n" + _image(), 3, "given twice (first on line 2)", id="duplicate-key"),
    pytest.param(HEAD + "base: &b {strategy: latest}\n" + _image(tags="{<<: *b}"), 3, "unknown field 'base'",
                 id="anchor-holder"),
    pytest.param(HEAD + _image(tags="{<<: {strategy: latest}}"), 6, "merge keys", id="merge-key"),
    pytest.param(HEAD + "images:\n  - name: app\n   image: x\n", 5, "not valid YAML", id="yaml-syntax"),
    pytest.param(HEAD + _image() + "---\n" + HEAD, 7, "not valid YAML", id="two-documents"),
    pytest.param("- a\n- b\n", 1, "the document must be a mapping", id="top-list"),
    pytest.param(HEAD + _image(tags="{strategy: !!python/name:os.system latest}"), 6, "YAML tag", id="python-tag"),
    pytest.param(HEAD + _image(tags="!Ref other"), 6, "YAML tag '!Ref' is not supported", id="local-tag"),
]


@pytest.mark.parametrize(("text", "line", "words"), BAD)
def test_bad_config_is_a_one_line_usage_error_with_its_line(tmp_path: Path, text: str, line: int, words: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(UsageError) as info:
        load_config(path)
    message = str(info.value)
    assert info.value.exit_code == 2
    assert "\n" not in message
    assert message.startswith(f"{path}:{line}: "), message
    assert words in message, message


@pytest.mark.parametrize("pattern", ["^1\\.2[0-9]\\.[0-9]+$", "^(20|22|24)\\.04$", "[(?=]x", "\\(?=",
                                     "^v?[0-9]+(?:\\.[0-9]+){2}$", "(?i)^Bookworm-\\d{8}$", "^(?:rc)??1$"])
def test_re2_patterns_are_accepted(tmp_path: Path, pattern: str) -> None:
    text = HEAD + _image(tags="{strategy: pattern, pattern: " + repr(pattern).replace("\\\\", "\\") + "}")
    assert load_config(_write(tmp_path, text)).images[0].tags.pattern == pattern


def test_unreadable_files(tmp_path: Path) -> None:
    for path, words in ((tmp_path / "missing.yaml", "does not exist"), (tmp_path, "is a directory")):
        with pytest.raises(UsageError, match=words):
            load_config(path)
    empty = _write(tmp_path, "# nothing\n")
    with pytest.raises(UsageError, match="empty file"):
        load_config(empty)
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(UsageError, match="not UTF-8"):
        load_config(binary)


def _laughs(levels: int = 9) -> list[str]:
    """The classic bomb: each level a list of nine aliases of the one before (level 9: 9**9 strings)."""
    lines = ['a0: &a0 "lol"']
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, levels + 1)]
    return lines


def _inline_laughs(level: int) -> str:
    """The same bomb written inline, each level defined as the first item of the next."""
    if level == 0:
        return '&a0 "lol"'
    return f"&a{level} [{_inline_laughs(level - 1)}, " + ", ".join([f"*a{level - 1}"] * 8) + "]"


@pytest.mark.parametrize("where", ["top", "list", "images"])
def test_billion_laughs_fails_fast(tmp_path: Path, where: str) -> None:
    if where == "top":  # as published: the anchors at the top of the document
        text = "\n".join(_laughs()) + "\n" + HEAD + _image()
    elif where == "list":  # where a list of tags is read
        text = HEAD + _image(tags=f"{{strategy: list, list: {_inline_laughs(9)}}}")
    else:  # where the images are read: the same image nine times, each an alias
        text = HEAD + "images: [&img {name: app, image: r.example/app, tags: {strategy: latest}}, " \
            + ", ".join(["*img"] * 8) + "]\n"
    path = _write(tmp_path, text)
    start = time.monotonic()
    with pytest.raises(UsageError) as info:
        load_config(path)
    assert time.monotonic() - start < 1.0
    assert "\n" not in str(info.value) and str(info.value).startswith(f"{path}:")


def test_node_budget(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Aliases count each time they are read: a document reading more nodes than the budget is refused."""
    monkeypatch.setattr("copa.bulk.config.MAX_NODES", 40)
    text = HEAD + "images:\n  - name: app\n    image: r.example/app\n    tags:\n      strategy: list\n" \
        + "      list: [&t '1.0', " + ", ".join(["*t"] * 50) + "]\n"
    with pytest.raises(UsageError, match=r"bulk.yaml:8: the document expands to more than 40 nodes"):
        load_config(_write(tmp_path, text))
    monkeypatch.setattr("copa.bulk.config.MAX_NODES", MAX_NODES)
    assert load_config(_write(tmp_path, text)).images[0].tags.list == ("1.0",)


@pytest.mark.parametrize(("template", "rendered"), [
    ("{{ .SourceTag }}-patched", "1.2-patched"),
    ("{{.SourceTag}}", "1.2"),
    ("{{ .SourceTag }}", "1.2"),
    ("patched-{{ .SourceTag }}-x", "patched-1.2-x"),
    ("a   {{- .SourceTag }}", "a1.2"),  # "{{- " trims the whitespace before it
    ("{{ .SourceTag -}}   -b", "1.2-b"),  # " -}}" trims the whitespace after it
    ("{{ .SourceTag }}.{{ .SourceTag }}", "1.2.1.2"),
    ("fixed", "fixed"),
])
def test_tag_template(template: str, rendered: str) -> None:
    assert render_tag(template, "1.2") == rendered
