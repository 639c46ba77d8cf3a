import pytest

from copa.errors import UsageError
from copa.oci.digest import Digest, InvalidDigest
from copa.oci.reference import Reference

D = "sha256:" + "a" * 64


@pytest.mark.parametrize(
    ("text", "registry", "repository", "tag", "digest"),
    [
        ("debian", "docker.io", "library/debian", "latest", None),
        ("debian:12", "docker.io", "library/debian", "12", None),
        ("bitnami/nginx:1.2", "docker.io", "bitnami/nginx", "1.2", None),
        ("docker.io/library/alpine", "docker.io", "library/alpine", "latest", None),
        ("index.docker.io/foo/bar:x", "docker.io", "foo/bar", "x", None),
        ("127.0.0.1:5000/app:1.0", "127.0.0.1:5000", "app", "1.0", None),
        ("localhost/app", "localhost", "app", "latest", None),
        ("localhost:5000/a/b/c:t", "localhost:5000", "a/b/c", "t", None),
        ("ghcr.io/org/img@" + D, "ghcr.io", "org/img", "", D),
        ("ghcr.io/org/img:t@" + D, "ghcr.io", "org/img", "t", D),
        ("registry.example:443/x", "registry.example:443", "x", "latest", None),
    ],
)
def test_parse(text: str, registry: str, repository: str, tag: str, digest: str | None) -> None:
    ref = Reference.parse(text)
    assert (ref.registry, ref.repository, ref.tag) == (registry, repository, tag)
    assert (str(ref.digest) if ref.digest else None) == digest
    assert Reference.parse(str(ref)) == ref


@pytest.mark.parametrize("text", ["", " debian", "Debian/UPPER", "a//b", "repo:bad tag", "x@sha256:zz", "a:-x"])
def test_parse_rejects(text: str) -> None:
    with pytest.raises(UsageError) as e:
        Reference.parse(text)
    assert e.value.exit_code == 2


def test_local_registries_are_plain_http() -> None:
    assert Reference.parse("127.0.0.1:5000/a").is_local
    assert Reference.parse("127.8.0.9:5000/a").is_local
    assert Reference.parse("localhost:1/a").is_local
    assert not Reference.parse("ghcr.io/a/b").is_local
    assert Reference.parse("debian").api_host == "registry-1.docker.io"


def test_digest() -> None:
    d = Digest.parse(D)
    assert str(d) == D and d.algorithm == "sha256"
    assert Digest.of_bytes(b"") == Digest.parse(
        "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    )
    for bad in ["sha256:abc", "md5:" + "a" * 32, "sha256:" + "A" * 64, "nocolon"]:
        with pytest.raises(InvalidDigest):
            Digest.parse(bad)


def test_ipv6_loopback_is_local() -> None:
    ref = Reference.parse("[::1]:5000/app:1")
    assert (ref.registry, ref.repository, ref.tag) == ("[::1]:5000", "app", "1")
    assert ref.is_local
    assert Reference.parse("[::1]/app").is_local
    assert not Reference.parse("[2001:db8::1]:5000/app").is_local


@pytest.mark.parametrize("text", ["repo:t\u00e4g", "repo:" + "x" * 129, "repo:.x"])
def test_tags_follow_the_distribution_grammar(text: str) -> None:
    with pytest.raises(UsageError):
        Reference.parse(text)
