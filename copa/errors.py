"""The one exception tree of copa. Each class carries the process exit code the CLI returns.

    CopaError                      1  anything else we raise on purpose
    ├── UsageError                 2  bad flags or flag combinations
    ├── ReportError                3  scanner report unreadable, malformed, or for another OS
    ├── RegistryError              4  registry/transport failures (network, HTTP status)
    │   ├── AuthError              4  credentials missing or refused
    │   └── NotFoundError          4  image, tag or blob does not exist
    ├── IntegrityError             5  digest, size, checksum or signature mismatch
    ├── UnsupportedImageError      6  image OS / package manager not supported, or image malformed
    ├── ResolutionError            7  a fixed package cannot be found or installed
    ├── LocalIOError               8  local files (layout, tar, report path) missing or unwritable
    ├── UnsafePathError            5  a package or layer tries to write outside the image root
    ├── LoaderError                9  --loader: podman or the Docker engine is missing or refused the image
    ├── EndOfLifeError            10  --exit-on-eol: the image's OS release is past its end of life
    └── BulkError                 11  copa bulk / patch --config: some jobs failed, the others ran (--ignore-errors)
        └── BulkStoppedError      12  a job failed and the sweep stopped there: the jobs not started were not run

Messages are one line: what went wrong, and what to do about it.
"""

from __future__ import annotations


class CopaError(Exception):
    exit_code = 1

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class UsageError(CopaError):
    exit_code = 2


class ReportError(CopaError):
    exit_code = 3


class RegistryError(CopaError):
    exit_code = 4


class AuthError(RegistryError):
    pass


class NotFoundError(RegistryError):
    pass


class IntegrityError(CopaError):
    exit_code = 5


class UnsafePathError(IntegrityError):
    pass


class UnsupportedImageError(CopaError):
    exit_code = 6


class ResolutionError(CopaError):
    exit_code = 7


class LocalIOError(CopaError):
    exit_code = 8


class LoaderError(CopaError):
    exit_code = 9


class EndOfLifeError(CopaError):
    exit_code = 10


class BulkError(CopaError):
    exit_code = 11


class BulkStoppedError(BulkError):
    exit_code = 12
