"""Image references: `[registry/]repository[:tag][@digest]`, with Docker Hub defaults."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, replace

from copa.errors import UsageError
from copa.oci.digest import Digest

DOCKER_HUB = "docker.io"
# Docker Hub's API lives on a different host than its reference name.
_API_HOSTS = {DOCKER_HUB: "registry-1.docker.io"}

_REPO_COMPONENT = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$")
# The distribution spec's tag grammar; ASCII only (a bare \w would admit any Unicode letter).
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")


def valid_tag(tag: str) -> bool:
    return _TAG.fullmatch(tag) is not None


@dataclass(frozen=True, slots=True)
class Reference:
    registry: str
    repository: str
    tag: str = ""
    digest: Digest | None = None

    @classmethod
    def parse(cls, text: str) -> Reference:
        original = text
        if not text or text != text.strip():
            raise UsageError(f"invalid image reference {original!r}: empty or has surrounding spaces")
        digest = None
        if "@" in text:
            text, _, dpart = text.partition("@")
            digest = Digest.parse(dpart)
        tag = ""
        slash = text.rfind("/")
        colon = text.rfind(":")
        if colon > slash:
            text, tag = text[:colon], text[colon + 1 :]
            if not valid_tag(tag):
                raise UsageError(f"invalid tag {tag!r} in image reference {original!r}")
        first, _, rest = text.partition("/")
        if rest and ("." in first or ":" in first or first == "localhost" or first != first.lower()):
            registry, repository = first, rest
        else:
            registry, repository = DOCKER_HUB, text
        if registry in ("index.docker.io", "registry-1.docker.io"):
            registry = DOCKER_HUB
        if registry == DOCKER_HUB and "/" not in repository:
            repository = f"library/{repository}"
        for component in repository.split("/"):
            if not _REPO_COMPONENT.match(component):
                raise UsageError(
                    f"invalid repository {repository!r} in image reference {original!r}: "
                    "use lowercase letters, digits and separators"
                )
        if not tag and digest is None:
            tag = "latest"
        return cls(registry, repository, tag, digest)

    @property
    def api_host(self) -> str:
        return _API_HOSTS.get(self.registry, self.registry)

    @property
    def is_local(self) -> bool:
        """localhost and 127.0.0.0/8 speak plain HTTP by default, as docker does."""
        bracketed = self.registry.startswith("[")  # an IPv6 literal, [::1] or [::1]:5000
        host = self.registry[1:].partition("]")[0] if bracketed else self.registry.rsplit(":", 1)[0]
        if host == "localhost":
            return True
        try:
            return ipaddress.ip_address(host).is_loopback
        except ValueError:
            return False

    @property
    def identifier(self) -> str:
        """What goes into /v2/<repo>/manifests/<identifier>: the digest if pinned, else the tag."""
        return str(self.digest) if self.digest else self.tag

    def with_tag(self, tag: str) -> Reference:
        return replace(self, tag=tag, digest=None)

    def with_digest(self, digest: Digest) -> Reference:
        return replace(self, digest=digest)

    def __str__(self) -> str:
        out = f"{self.registry}/{self.repository}"
        if self.tag:
            out += f":{self.tag}"
        if self.digest:
            out += f"@{self.digest}"
        return out
