"""copa: patch OS-package vulnerabilities in container images without a daemon.

    import copa
    result = copa.patch(image="127.0.0.1:5000/app:1.0", report="trivy.json", tag="1.0-patched", push=True)

`copa.patch` takes the CLI's options as keywords (see `copa.api.PatchOptions`); the engine's pieces live in
`copa.oci` and `copa.pkg` and can be used on their own.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from copa.api import PatchResult


def patch(image: str, **options: Any) -> PatchResult:
    """Patch `image`; keywords as in `copa.api.PatchOptions` (report, tag, push, oci_dir, output_tar, ...)."""
    from copa.api import PatchOptions
    from copa.api import patch as run

    return run(PatchOptions(image=image, **options))


__all__ = ["__version__", "patch"]
