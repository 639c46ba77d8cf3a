"""The patch layer's compression (--compression)."""

from __future__ import annotations

import enum

from copa.errors import UsageError
from copa.oci.model import MediaType


class Compression(enum.Enum):
    GZIP = "gzip"
    ZSTD = "zstd"

    @classmethod
    def parse(cls, text: str) -> Compression:
        try:
            return cls(text)
        except ValueError:
            raise UsageError(f"unknown --compression {text!r}: use gzip or zstd") from None

    def media_type(self, docker: bool) -> str:
        if self is Compression.ZSTD:
            if docker:
                raise UsageError("--compression zstd needs an OCI image; this is a Docker v2s2 image, use gzip")
            return MediaType.OCI_LAYER_ZSTD
        return MediaType.DOCKER_LAYER_GZIP if docker else MediaType.OCI_LAYER_GZIP
