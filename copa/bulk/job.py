"""One unit of a sweep: one source image (a resolved tag) patched to one target."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Job:
    name: str  # the config's images[].name: how the summary groups jobs
    source: str  # REGISTRY/REPOSITORY:TAG of the image to patch, its tag resolved by the tag strategy
    target: str  # REGISTRY/REPOSITORY:TAG of the patched image (the target registry and tag template applied)
    platforms: tuple[str, ...] = ()  # the image's `platforms`: OS/ARCH[/VARIANT] to patch (empty: all)
    report: str | None = None  # the report file (or per-platform directory) matched to this image, if any
