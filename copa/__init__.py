"""copa: patch OS-package vulnerabilities in container images without a daemon."""

__version__ = "0.1.0"
