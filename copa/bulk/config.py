"""Copacetic's PatchConfig (`apiVersion: copa.sh/v1alpha1`, `kind: PatchConfig`) read into values.

The fields and their meaning are Copacetic's (pkg/bulk/config.go): a global `target` (`registry` prefix, `tag`
template, default `{{ .SourceTag }}-patched`), and `images[]` with `name`, `image` (a repository), `tags` (`strategy`
list | pattern | latest, with `list`, `pattern`, `maxTags`, `exclude`), `platforms` and a per-image `target`.

Stricter than Copacetic, on purpose: an unknown field, a wrong type, a missing field, a duplicate key or image
name, a bad regex or a bad tag is an error naming the file and line (Copacetic's yaml.v3 ignores unknown fields,
so a typo such as `maxtags` silently patched everything). Scalars are read as text, as yaml.v3 reads them into
Go string fields: `list: [3.10]` is the tag "3.10", not the float 3.1.

The YAML is composed (not constructed) and walked with a budget of nodes, so aliases cannot make a small document
expand into a huge one ("billion laughs"), and a cycle of aliases ends the same way.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from copa.errors import UsageError
from copa.oci.model import Platform
from copa.oci.reference import Reference, valid_tag

API_VERSION = "copa.sh/v1alpha1"
KIND = "PatchConfig"
DEFAULT_TAG_TEMPLATE = "{{ .SourceTag }}-patched"  # Copacetic's resolveTargetTag default
STRATEGIES = ("list", "pattern", "latest")

MAX_CONFIG_BYTES = 1 << 20
# Nodes visited while reading, aliases counted each time they are used: far above any real config (a few
# hundred images), far below what an alias bomb expands to.
MAX_NODES = 100_000

_STR = "tag:yaml.org,2002:str"
_NULL = "tag:yaml.org,2002:null"
_INT = "tag:yaml.org,2002:int"
_MERGE = "tag:yaml.org,2002:merge"
_CORE_TAGS = frozenset(f"tag:yaml.org,2002:{t}" for t in ("str", "int", "float", "bool", "null", "timestamp", "seq",
                                                            "map", "merge"))

# Go text/template actions Copacetic's tag templates use: {{ .SourceTag }}, with optional trim markers.
_ACTION = re.compile(r"\{\{(-\s)?\s*(.*?)\s*(\s-)?\}\}", re.DOTALL)


@dataclass(frozen=True, slots=True)
class Target:
    registry: str = ""  # prefix (e.g. "ghcr.io/myorg") the source repository's last path segment is appended to
    tag: str = ""  # Go text/template of the target tag; "" means "not set here" (see PatchConfig.target_for)
    line: int = 0


@dataclass(frozen=True, slots=True)
class TagStrategy:
    strategy: str  # "list" | "pattern" | "latest"
    pattern: str = ""  # a regex searched in each tag (Go's MatchString: anchor it with ^...$ to match whole tags)
    max_tags: int = 0  # keep the newest N after ordering (0: all)
    list: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()  # exact tag names, as in Copacetic's excludeTags
    line: int = 0

    def matches(self, tag: str) -> bool:
        return re.search(self.pattern, tag) is not None


@dataclass(frozen=True, slots=True)
class ImageSpec:
    name: str
    image: str  # REGISTRY/REPOSITORY as written (no tag, no digest)
    tags: TagStrategy
    platforms: tuple[str, ...] = ()
    target: Target = Target()
    line: int = 0

    @property
    def repository(self) -> Reference:
        return Reference.parse(self.image)


@dataclass(frozen=True, slots=True)
class PatchConfig:
    source: str  # the file it was read from (errors name it)
    target: Target
    images: tuple[ImageSpec, ...]

    def target_for(self, image: ImageSpec) -> Target:
        """The image's effective target: its own fields, else the global ones (Copacetic's mergeTarget), the tag
        template defaulting to `{{ .SourceTag }}-patched`."""
        registry = image.target.registry or self.target.registry
        tag = image.target.tag or self.target.tag or DEFAULT_TAG_TEMPLATE
        return Target(registry, tag, image.target.line or self.target.line)


def render_tag(template: str, source_tag: str) -> str:
    """Copacetic's tag template rendered for `source_tag`. Only `{{ .SourceTag }}` is an action here (`check_template`
    refuses the rest when the config is read); `{{- ` and ` -}}` trim the whitespace next to them, as in Go."""
    actions = list(_ACTION.finditer(template))
    texts = [template[a.end() if a else 0:b.start() if b else len(template)]
             for a, b in zip([None, *actions], [*actions, None], strict=True)]
    out: list[str] = []
    for i, text in enumerate(texts):
        if i > 0 and actions[i - 1].group(3):
            text = text.lstrip()
        if i < len(actions) and actions[i].group(1):
            text = text.rstrip()
        out.append(text)
        if i < len(actions):
            out.append(source_tag)
    return "".join(out)


def check_template(template: str) -> str | None:
    """Why `template` is not a tag template copa renders, or None."""
    for m in _ACTION.finditer(template):
        if m.group(2) != ".SourceTag":
            return (f"template action {m.group(0)!r} is not supported: the only value is {{{{ .SourceTag }}}} "
                    f"(the source image's tag)")
    leftover = _ACTION.sub("", template)
    if "{{" in leftover or "}}" in leftover:
        return "template has an unclosed {{ or a stray }}"
    sample = render_tag(template, "1.0.0")
    if not valid_tag(sample):
        return (f"template renders {sample!r} for tag 1.0.0, which is not a valid tag "
                f"(letters, digits, '_', '.', '-', at most 128, not starting with '.' or '-')")
    return None


# --- reading -------------------------------------------------------------------------------------------------


class _Reader:
    """Walks composed YAML nodes into values; every error names the file and the node's line."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.budget = MAX_NODES

    def fail(self, node: yaml.Node | None, message: str) -> UsageError:
        line = f":{node.start_mark.line + 1}" if node is not None else ""
        return UsageError(f"{self.source}{line}: {message}")

    def visit(self, node: yaml.Node) -> None:
        self.budget -= 1
        if self.budget < 0:
            raise self.fail(node, f"the document expands to more than {MAX_NODES} nodes (anchors and aliases "
                                  "repeating each other?): write the config out without nested aliases")
        if node.tag not in _CORE_TAGS:
            # Nothing is constructed from YAML here; an application tag (!!python/..., !Ref) means another format.
            raise self.fail(node, f"YAML tag {node.tag!r} is not supported in a PatchConfig: remove it")

    def mapping(self, node: yaml.Node, where: str, allowed: tuple[str, ...],
                required: tuple[str, ...] = ()) -> dict[str, tuple[yaml.Node, yaml.Node]]:
        """{key: (key node, value node)} of a mapping whose keys are all in `allowed`."""
        self.visit(node)
        if not isinstance(node, yaml.MappingNode):
            raise self.fail(node, f"{where} must be a mapping (key: value), not {_kind(node)}")
        out: dict[str, tuple[yaml.Node, yaml.Node]] = {}
        for key, value in node.value:
            self.visit(key)
            if key.tag == _MERGE:
                raise self.fail(key, f"{where}: YAML merge keys (<<) are not supported: write the fields out")
            if not isinstance(key, yaml.ScalarNode) or key.tag != _STR:
                raise self.fail(key, f"{where}: keys must be field names, not {_kind(key)}")
            name = key.value
            if name not in allowed:
                raise self.fail(key, f"{where}: unknown field {name!r}; the fields are {', '.join(allowed)}")
            if name in out:
                raise self.fail(key, f"{where}: field {name!r} is given twice (first on line "
                                     f"{out[name][0].start_mark.line + 1})")
            out[name] = (key, value)
        for name in required:
            if name not in out or _is_null(out[name][1]):
                raise self.fail(node, f"{where}: required field {name!r} is missing")
        return out

    def text(self, node: yaml.Node, where: str) -> str:
        """A scalar's text as written (yaml.v3 reads any scalar into a Go string field this way); null is ""."""
        self.visit(node)
        if not isinstance(node, yaml.ScalarNode):
            raise self.fail(node, f"{where} must be a string, not {_kind(node)}")
        return "" if _is_null(node) else str(node.value)

    def integer(self, node: yaml.Node, where: str) -> int:
        self.visit(node)
        if not isinstance(node, yaml.ScalarNode) or node.tag != _INT:
            raise self.fail(node, f"{where} must be a whole number, not {_kind(node)}")
        try:
            return int(node.value.replace("_", ""), 0)
        except ValueError:
            raise self.fail(node, f"{where} must be a whole number, not {node.value!r}") from None

    def texts(self, node: yaml.Node, where: str) -> list[tuple[yaml.Node, str]]:
        self.visit(node)
        if _is_null(node):
            return []
        if not isinstance(node, yaml.SequenceNode):
            raise self.fail(node, f"{where} must be a list ([a, b] or '- a' lines), not {_kind(node)}")
        return [(item, self.text(item, f"{where}[{i}]")) for i, item in enumerate(node.value)]


def _is_null(node: yaml.Node) -> bool:
    return isinstance(node, yaml.ScalarNode) and node.tag == _NULL


def _kind(node: yaml.Node) -> str:
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    if _is_null(node):
        return "null"
    kind = node.tag.rsplit(":", 1)[-1]
    return f"{kind} {node.value!r}" if kind in ("int", "float", "bool") else f"{node.value!r}"


def load_config(path: str | Path) -> PatchConfig:
    """The PatchConfig in the YAML file `path`. Every error is a one-line UsageError naming the file and line."""
    source = str(path)
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError:
        raise UsageError(f"{source}: config file does not exist") from None
    except IsADirectoryError:
        raise UsageError(f"{source}: is a directory, not a PatchConfig file") from None
    except OSError as e:
        raise UsageError(f"{source}: cannot read config file: {e.strerror or e}") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise UsageError(f"{source}: more than {MAX_CONFIG_BYTES} bytes is too big for a PatchConfig")
    return parse_config(data, source)


def parse_config(data: bytes, source: str) -> PatchConfig:
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise UsageError(f"{source}: not UTF-8 text (bad byte at offset {e.start})") from None
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = f":{mark.line + 1}" if mark is not None else ""
        what = " ".join(x for x in (e.context, e.problem) if x)
        raise UsageError(f"{source}{line}: not valid YAML: {what}") from None
    except yaml.YAMLError as e:
        raise UsageError(f"{source}: not valid YAML: {' '.join(str(e).split())}") from None
    except RecursionError:
        raise UsageError(f"{source}: YAML nested too deeply to be a PatchConfig") from None
    if root is None:
        raise UsageError(f"{source}: empty file: write a PatchConfig (apiVersion: {API_VERSION}, kind: {KIND})")
    reader = _Reader(source)
    try:
        return _config(reader, root)
    except RecursionError:
        raise UsageError(f"{source}: YAML nested too deeply to be a PatchConfig") from None


def _config(r: _Reader, root: yaml.Node) -> PatchConfig:
    fields = r.mapping(root, "the document", ("apiVersion", "kind", "target", "images"),
                       ("apiVersion", "kind", "images"))
    api = r.text(fields["apiVersion"][1], "apiVersion")
    if api != API_VERSION:
        raise r.fail(fields["apiVersion"][1], f"apiVersion {api!r} is not supported: write apiVersion: {API_VERSION}")
    kind = r.text(fields["kind"][1], "kind")
    if kind != KIND:
        raise r.fail(fields["kind"][1], f"kind {kind!r} is not supported: write kind: {KIND}")
    target = _target(r, fields["target"][1], "target") if "target" in fields else Target()
    images_node = fields["images"][1]
    r.visit(images_node)
    if not isinstance(images_node, yaml.SequenceNode):
        raise r.fail(images_node, f"images must be a list of images, not {_kind(images_node)}")
    if not images_node.value:
        raise r.fail(images_node, "images is empty: name at least one image to patch")
    images: list[ImageSpec] = []
    seen: dict[str, int] = {}
    for i, node in enumerate(images_node.value):
        spec = _image(r, node, f"images[{i}]")
        if spec.name in seen:
            raise r.fail(node, f"images[{i}]: name {spec.name!r} is already used on line {seen[spec.name]}: "
                               "give each image its own name")
        seen[spec.name] = spec.line
        images.append(spec)
    return PatchConfig(r.source, target, tuple(images))


def _target(r: _Reader, node: yaml.Node, where: str) -> Target:
    if _is_null(node):
        return Target()
    fields = r.mapping(node, where, ("registry", "tag"))
    registry = r.text(fields["registry"][1], f"{where}.registry") if "registry" in fields else ""
    registry = registry.rstrip("/")  # Copacetic trims the trailing slash before appending the image name
    if registry:
        try:
            Reference.parse(f"{registry}/image")  # what the target becomes, with the image's last segment
        except UsageError as e:
            raise r.fail(fields["registry"][1], f"{where}.registry {registry!r} is not a registry/namespace "
                                                f"prefix (no tag: the tag template makes it) ({e.message})") from None
    tag = r.text(fields["tag"][1], f"{where}.tag") if "tag" in fields else ""
    if tag:
        problem = check_template(tag)
        if problem:
            raise r.fail(fields["tag"][1], f"{where}.tag {tag!r}: {problem}")
    return Target(registry, tag, node.start_mark.line + 1)


def _image(r: _Reader, node: yaml.Node, where: str) -> ImageSpec:
    fields = r.mapping(node, where, ("name", "image", "tags", "platforms", "target"), ("name", "image", "tags"))
    name = r.text(fields["name"][1], f"{where}.name")
    if not name:
        raise r.fail(fields["name"][1], f"{where}.name is empty: name the image (the summary groups by it)")
    where = f"images[{name}]"
    image_node = fields["image"][1]
    image = r.text(image_node, f"{where}.image")
    try:
        ref = Reference.parse(image)
    except UsageError as e:
        raise r.fail(image_node, f"{where}.image: {e.message}") from None
    tail = image.rsplit("/", 1)[-1]
    if ref.digest is not None or ":" in tail:
        raise r.fail(image_node, f"{where}.image {image!r} must be a repository without tag or digest: put the "
                                 "tags under tags:")
    tags = _tags(r, fields["tags"][1], f"{where}.tags")
    platforms: list[str] = []
    if "platforms" in fields:
        for item, text in r.texts(fields["platforms"][1], f"{where}.platforms"):
            try:
                platform = Platform.parse(text)
            except UsageError as e:
                raise r.fail(item, f"{where}.platforms: {e.message}") from None
            if text in platforms:
                raise r.fail(item, f"{where}.platforms: {text} is listed twice")
            platforms.append(str(platform))
    target = _target(r, fields["target"][1], f"{where}.target") if "target" in fields else Target()
    return ImageSpec(name, image, tags, tuple(platforms), target, node.start_mark.line + 1)


def _tags(r: _Reader, node: yaml.Node, where: str) -> TagStrategy:
    fields = r.mapping(node, where, ("strategy", "pattern", "maxTags", "list", "exclude"), ("strategy",))
    strategy_node = fields["strategy"][1]
    strategy = r.text(strategy_node, f"{where}.strategy")
    if strategy not in STRATEGIES:
        raise r.fail(strategy_node, f"{where}.strategy {strategy!r} is unknown: use one of {', '.join(STRATEGIES)}")

    def tag_list(field: str) -> tuple[str, ...]:
        if field not in fields:
            return ()
        out: list[str] = []
        for item, tag in r.texts(fields[field][1], f"{where}.{field}"):
            if not valid_tag(tag):
                raise r.fail(item, f"{where}.{field}: {tag!r} is not a valid tag (letters, digits, '_', '.', '-', "
                                   "at most 128, not starting with '.' or '-')")
            if tag not in out:
                out.append(tag)
        return tuple(out)

    listed, exclude = tag_list("list"), tag_list("exclude")
    pattern = r.text(fields["pattern"][1], f"{where}.pattern") if "pattern" in fields else ""
    max_tags = r.integer(fields["maxTags"][1], f"{where}.maxTags") if "maxTags" in fields else 0
    if max_tags < 0:
        raise r.fail(fields["maxTags"][1], f"{where}.maxTags {max_tags} is negative: use 0 (all) or a count")
    if strategy == "list" and not listed:
        raise r.fail(node, f"{where}: strategy 'list' needs a non-empty list of tags (list: [...])")
    if strategy == "pattern":
        if not pattern:
            raise r.fail(node, f"{where}: strategy 'pattern' needs a pattern (a regular expression)")
        try:
            re.compile(pattern)
        except re.error as e:
            raise r.fail(fields["pattern"][1], f"{where}.pattern {pattern!r} is not a valid regular expression: "
                                               f"{e.msg} at position {e.pos}") from None
        foreign = _not_re2(pattern)
        if foreign:
            raise r.fail(fields["pattern"][1], f"{where}.pattern {pattern!r}: {foreign} is not in Go's regexp "
                                               "syntax (RE2), which Copacetic reads the pattern with: rewrite it")
    return TagStrategy(strategy, pattern, max_tags, listed, exclude, node.start_mark.line + 1)


# Python re constructs Go's regexp (RE2) refuses, after "(": Copacetic would reject a config using them.
_PY_ONLY_GROUPS = (("?=", "a lookahead"), ("?!", "a negative lookahead"), ("?<=", "a lookbehind"),
                   ("?<!", "a negative lookbehind"), ("?>", "an atomic group"), ("?(", "a conditional"),
                   ("?P=", "a named backreference"))


def _not_re2(pattern: str) -> str | None:
    """The first construct of `pattern` that Python's re accepts and Go's regexp does not, or None."""
    i, in_class = 0, False
    while i < len(pattern):
        c = pattern[i]
        if c == "\\":
            nxt = pattern[i + 1:i + 2]
            if not in_class and nxt.isdigit() and nxt != "0":
                return f"the backreference \\{nxt}"
            i += 2
            continue
        if in_class:
            in_class = c != "]"
        elif c == "[":
            in_class = True
            if pattern[i + 1:i + 2] == "]":  # "[]...]": the first ] is a member
                i += 1
        elif c == "(":
            for prefix, what in _PY_ONLY_GROUPS:
                if pattern.startswith(prefix, i + 1):
                    return what
        elif c in "*+?}" and pattern[i + 1:i + 2] == "+" and not (c == "?" and pattern[i - 1:i] == "("):
            return "a possessive quantifier"
        i += 1
    return None
