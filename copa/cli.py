"""Command line: argument parsing and output. The only place that turns errors into exit codes."""

from __future__ import annotations

import argparse
import atexit
import json
import os
import re
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TextIO

from copa import __version__, events
from copa.bulk import command as bulk
from copa.codecache import install as compiled_dataclass_methods
from copa.errors import CopaError, UsageError
from copa.memory import fewer_collections, limit_malloc_arenas
from copa.progress import Reporter, make_reporter

if TYPE_CHECKING:
    from copa.api import PatchOptions, PatchResult
    from copa.pkg.base import Skip, Update


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # argparse's own errors become our one-line usage error with its exit code.
        raise UsageError(f"{message} (see 'copa patch --help')")


def _version() -> str:
    from copa.pkg.detect import supported_formats

    lines = [f"copa {__version__}"]
    lines += [f"  {name}: {formats}" for name, formats in supported_formats().items()]
    lines.append("  reports: Trivy JSON (SchemaVersion 2), Grype JSON, copa v1alpha1/v1alpha2, scanner plugins")
    lines.append("  images: OCI image-spec 1.1 and Docker v2 schema 2 (registry, OCI layout, docker-archive)")
    return "\n".join(lines)


class _Version(argparse.Action):
    # argparse's own version action re-wraps the text into one paragraph; this keeps one line per format.
    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: object,
                 option_string: str | None = None) -> None:
        _write_out(lambda: print(_version()))
        parser.exit(0)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="copa", description="Patch OS-package vulnerabilities in container images, no daemon.")
    parser.add_argument("--version", action=_Version, nargs=0, help="show the version and the formats copa reads")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser)
    p = sub.add_parser("patch", help="patch an image")
    p.add_argument("-i", "--image",
                   help="image to patch: REGISTRY/REPO:TAG, oci:DIR[:NAME] or docker-archive:FILE[:REPO:TAG]")
    p.add_argument("-r", "--report", help="vulnerability report file (Trivy or Grype JSON, copa v1alpha1/v1alpha2), "
                   "or a directory of one report per platform")
    p.add_argument("-s", "--scanner", help="trivy, grype or native: the report must be that format (without -s "
                   "any is recognised by content); or NAME to run the scanner plugin copa-NAME on the report")
    p.add_argument("-t", "--tag", help="tag for the patched image (a bare tag means the source repository)")
    p.add_argument("--tag-suffix", default="patched", help="suffix for the default tag (default: patched)")
    p.add_argument("-p", "--push", action="store_true", help="push the patched image to the registry")
    p.add_argument("--oci-dir", help="write the patched image into this OCI layout directory")
    p.add_argument("--output-tar", help="write the patched image as a docker-archive tar")
    p.add_argument("--platform", action="append", default=[], metavar="OS/ARCH[/VARIANT][,...]",
                   help="platforms of a multi-platform image to patch (comma-separated, repeatable; default: every "
                   "platform, or those the reports name)")
    p.add_argument("-f", "--format", choices=["openvex"], help="format of the -o document (default: openvex)")
    p.add_argument("-o", "--output", help="write an OpenVEX document of the fixed vulnerabilities to this file")
    p.add_argument("--attach", action="store_true",
                   help="push the OpenVEX document and an SBOM as OCI referrers of each patched image (needs --push)")
    p.add_argument("-l", "--loader", choices=["podman", "docker"],
                   help="load the patched image into podman's or the Docker engine's local image store")
    p.add_argument("--progress", default="auto", choices=["auto", "plain", "tty", "quiet", "json"],
                   help="progress display on stderr (default auto: live bars on a terminal, plain lines otherwise)")
    p.add_argument("--exit-on-eol", action="store_true",
                   help="fail (exit 10) when the image's OS release is past its end of life")
    p.add_argument("--eol-api-url", default="https://endoflife.date/api/v1/products",
                   help="endoflife.date-compatible API asked by --exit-on-eol")
    p.add_argument("--ignore-errors", action="store_true", help="skip packages that cannot be fixed")
    p.add_argument("--allow-remove", action="store_true",
                   help="remove installed packages where the package manager would, to settle a conflict "
                   "(without it such an upgrade fails, naming them)")
    p.add_argument("--timeout", type=_duration, default=300.0,
                   help="network timeout: seconds, or a duration such as 5m or 1m30s (default 5m)")
    p.add_argument("--insecure", action="append", default=[], metavar="REGISTRY",
                   help="speak plain HTTP to this registry (repeatable)")
    p.add_argument("--ca-bundle", "--cacert", dest="ca_bundle", help="CA certificates file for registry TLS")
    p.add_argument("--cert", help="TLS client certificate (PEM) for the registry")
    p.add_argument("--key", help="private key (PEM) of the --cert client certificate")
    p.add_argument("--compression", default="gzip", choices=["gzip", "zstd"], help="patch layer compression")
    p.add_argument("--dry-run", action="store_true", help="print the plan and write nothing")
    p.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    p.add_argument("--repository", action="append", default=[], metavar="LINE",
                   help="package repository replacing the image's own (repeatable): 'deb URL bookworm main' (apt), "
                   "a repository URL (apk), a baseurl (rpm)")
    p.add_argument("--repositories-file", help="file of repositories replacing the image's own (sources.list or "
                   "deb822, apk repositories, .repo)")
    p.add_argument("--keyring", action="append", default=[], metavar="FILE",
                   help="OpenPGP keyring (apt), RSA public key (apk) or RPM-GPG-KEY file (rpm) to trust (repeatable)")
    p.add_argument("--mirror", action="append", default=[], metavar="FROM=TO",
                   help="rewrite repository URL prefix FROM to TO (repeatable)")
    p.add_argument("--allow-unsigned-repositories", action="store_true",
                   help="accept repositories whose index is unsigned or not signed by a trusted key (rpm: packages' "
                   "header signatures too); checksums are still enforced")
    p.add_argument("--repository-auth", metavar="FILE",
                   help="credentials for package repositories, in apt's auth.conf (netrc) format; never copied into "
                   "the image")
    p.add_argument("--repository-cert", metavar="FILE", help="TLS client certificate (PEM) for package repositories")
    p.add_argument("--repository-key", metavar="FILE", help="private key (PEM) of --repository-cert")
    p.add_argument("--cache-dir", help="package and index cache (default ~/.cache/copa)")
    # Copacetic's flags that name BuildKit or its language patching: accepted so its pipelines run unchanged.
    p.add_argument("-a", "--addr", help=argparse.SUPPRESS)
    p.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--pkg-types", default="os", help=argparse.SUPPRESS)
    p.add_argument("--library-patch-level", help=argparse.SUPPRESS)
    p.add_argument("--working-folder", help=argparse.SUPPRESS)
    bulk.add_flags(p)
    bulk.add_command(sub, p)  # last: `copa bulk` takes every flag above
    return parser


_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}


def _duration(text: str) -> float:
    """Seconds, or a Go-style duration as Copacetic takes it (5m, 1h30m, 90s, 1.5m)."""
    rest, value = text.strip(), 0.0
    if re.fullmatch(r"\d+(?:\.\d+)?", rest):
        value, rest = float(rest), ""
    while rest:
        m = re.match(r"(\d+(?:\.\d+)?)(ms|h|m|s)", rest)
        if m is None:
            raise argparse.ArgumentTypeError(f"invalid duration {text!r}: use seconds or e.g. 5m, 1m30s")
        value += float(m.group(1)) * _UNITS[m.group(2)]
        rest = rest[m.end():]
    if value <= 0:
        raise argparse.ArgumentTypeError(f"invalid duration {text!r}: it must be more than zero")
    return value


def _platforms(values: Sequence[str]) -> tuple[str, ...]:
    out: list[str] = []
    for value in values:
        out.extend(v.strip() for v in value.split(",") if v.strip())
    return tuple(dict.fromkeys(out))


def _mirrors(values: Sequence[str]) -> tuple[tuple[str, str], ...]:
    out = []
    for value in values:
        src, sep, dst = value.partition("=")
        if not sep or not src or not dst:
            raise UsageError(f"invalid --mirror {value!r}: expected FROM=TO, e.g. http://a/debian=http://b/debian")
        out.append((src, dst))
    return tuple(out)


def options_from(args: argparse.Namespace) -> PatchOptions:
    if args.format and not args.output:
        raise UsageError(f"-f {args.format} needs -o FILE: the file to write the {args.format} document to")
    if args.attach and not args.push:
        raise UsageError("--attach pushes referrers of the patched image: it needs --push")
    if bool(args.cert) != bool(args.key):
        raise UsageError("--cert and --key go together: pass the client certificate and its private key")
    if bool(args.repository_cert) != bool(args.repository_key):
        raise UsageError("--repository-cert and --repository-key go together: pass the certificate and its key")
    if args.pkg_types.strip() != "os":
        raise UsageError(f"--pkg-types {args.pkg_types}: copa patches OS packages only; pass --pkg-types os")
    # The engine is imported when a patch is asked for, not with the CLI: `copa --version` and `--help` stay quick.
    from copa.api import PatchOptions
    from copa.pkg.options import RepositoryOptions

    return PatchOptions(
        image=args.image,
        report=args.report,
        tag=args.tag,
        tag_suffix=args.tag_suffix,
        push=args.push,
        oci_dir=args.oci_dir,
        output_tar=args.output_tar,
        platforms=_platforms(args.platform),
        scanner=args.scanner,
        vex_output=args.output,
        attach=args.attach,
        loader=args.loader,
        exit_on_eol=args.exit_on_eol,
        eol_api_url=args.eol_api_url,
        client_cert=args.cert,
        client_key=args.key,
        ignore_errors=args.ignore_errors,
        allow_remove=args.allow_remove,
        timeout=args.timeout,
        insecure=tuple(args.insecure),
        ca_bundle=args.ca_bundle,
        compression=args.compression,
        dry_run=args.dry_run,
        repos=RepositoryOptions(
            repositories=tuple(args.repository),
            repositories_file=Path(args.repositories_file) if args.repositories_file else None,
            keyrings=tuple(Path(k) for k in args.keyring),
            mirrors=_mirrors(args.mirror),
            allow_unsigned=args.allow_unsigned_repositories,
            auth_file=Path(args.repository_auth) if args.repository_auth else None,
            client_cert=Path(args.repository_cert) if args.repository_cert else None,
            client_key=Path(args.repository_key) if args.repository_key else None,
        ),
        cache_dir=args.cache_dir,
    )


def _update_json(u: Update) -> dict[str, Any]:
    return {"name": u.name, "architecture": u.architecture, "from": u.old_version, "to": u.new_version,
            "kind": u.kind.value, "vulnerabilities": list(u.vulnerabilities),
            **({"reason": u.reason} if u.reason else {}),
            **({"scripts": u.scripts_note} if u.scripts_note else {})}


def _skip_json(s: Skip) -> dict[str, str]:
    return {"name": s.name, "reason": s.reason.value, "detail": s.detail}


def result_json(result: PatchResult) -> dict[str, Any]:
    out: dict[str, Any] = {
        "image": result.image,
        "target": result.target,
        "digest": result.digest,
        "os": result.os,
        "upToDate": result.up_to_date,
        "dryRun": result.dry_run,
        "seconds": round(result.seconds, 3),
        "updates": [_update_json(u) for u in result.updates],
        "skipped": [_skip_json(s) for s in result.skipped],
        "unfixedInReport": result.unfixed,
        "outputs": [{"kind": w.kind, "target": w.target, "digest": str(w.digest)} for w in result.outputs],
    }
    if result.platforms:
        out["platforms"] = [
            {"platform": p.platform, "result": p.result, "os": p.os, "digest": p.digest, "tag": p.tag,
             **({"detail": p.detail} if p.detail else {}),
             "updates": [_update_json(u) for u in p.updates], "skipped": [_skip_json(s) for s in p.skipped],
             "unfixedInReport": p.unfixed}
            for p in result.platforms
        ]
    return out


def _print_updates(updates: Sequence[Update], skipped: Sequence[Skip], unfixed: int, out: TextIO,
                   indent: str = "  ") -> None:
    width = max((len(u.name) for u in updates), default=0)
    for u in updates:
        ids = [v for v in u.vulnerabilities if v]
        cves = f"  [{', '.join(ids)}]" if ids else ""
        old = u.old_version or "(new)"
        kind = "" if u.kind.value == "reported" else f" ({u.kind.value}{': ' + u.reason if u.reason else ''})"
        print(f"{indent}{u.name:<{width}}  {old} -> {u.new_version or '(removed)'}{kind}{cves}", file=out)
        if u.scripts_note:
            print(f"{indent}{'':<{width}}  note: {u.scripts_note}", file=out)
    for s in skipped:
        detail = f": {s.detail}" if s.detail else ""
        print(f"{indent}not fixed: {s.name} ({s.reason.value}{detail})", file=out)
    if unfixed:
        print(f"{indent}{unfixed} reported packages have no fixed version yet", file=out)


_OUTCOME = {"patched": "updated {n} packages", "planned": "would update {n} packages",
            "up-to-date": "already up to date", "kept": "kept as it is", "failed": "failed, kept as it is"}


def print_summary(result: PatchResult, out: TextIO) -> None:
    if result.platforms:
        print(f"{result.image}: {len(result.platforms)} platforms", file=out)
        for p in result.platforms:
            what = _OUTCOME.get(p.result, p.result).format(n=len(p.updates))
            os_name = f" ({p.os})" if p.os else ""
            detail = f": {p.detail}" if p.detail else ""
            tag = f" -> {p.tag}" if p.tag else ""
            print(f"  {p.platform}{os_name}: {what}{detail}{tag}", file=out)
            _print_updates(p.updates, p.skipped, p.unfixed, out, indent="    ")
    elif result.up_to_date:
        print(f"{result.image}: already up to date ({result.os}); nothing written", file=out)
        _print_updates((), result.skipped, result.unfixed, out)
    else:
        verb = "would update" if result.dry_run else "updated"
        print(f"{result.image} ({result.os}): {verb} {len(result.updates)} packages", file=out)
        _print_updates(result.updates, result.skipped, result.unfixed, out)
    if result.platforms and result.up_to_date:
        print("nothing to patch; nothing written", file=out)
    for w in result.outputs:
        # A docker-archive has no manifest digest; what identifies its image is the config digest (the image ID).
        what = "image ID" if w.kind in ("output-tar", "podman", "docker") else "digest"
        print(f"wrote {w.target} ({what} {w.digest})", file=out)
    if result.outputs:
        print(f"done in {result.seconds:.1f}s", file=out)


def main(argv: Sequence[str] | None = None) -> int:
    progress = Reporter()  # until the flags are read there is nothing to show
    sweep = False
    try:
        args = build_parser().parse_args(argv)
        limit_malloc_arenas()  # before any thread starts (copa/memory.py)
        fewer_collections()
        compiled_dataclass_methods()  # before the engine's modules are imported (copa/codecache.py)
        if args.command == "bulk" or (args.command == "patch" and args.config):
            sweep = True
            return bulk.run_sweep(args, options_from, _write_out)
        if args.command != "patch":
            build_parser().print_help()
            return 2
        if not args.image:
            raise UsageError("copa patch needs -i IMAGE, or --config FILE to patch the images a PatchConfig names")
        bulk.refuse_outside_sweep(args)
        options = options_from(args)
        # Started with stderr closed (`2>&-`): Python has no sys.stderr, and the run goes on without progress.
        progress = make_reporter(args.progress, sys.stderr) if sys.stderr is not None else Reporter()
        from copa.api import patch

        with events.use(progress):
            result = patch(options, progress)
        progress.close()
        out = sys.stdout
        if args.json:
            _write_out(lambda: out.write(json.dumps(result_json(result), indent=2) + "\n"))
        else:
            _write_out(lambda: print_summary(result, out))
        return 0
    except CopaError as e:
        progress.close()
        _error(f"copa: error: {e}")
        return e.exit_code
    except KeyboardInterrupt:
        progress.close()
        _error("copa: interrupted; jobs that had finished keep their tags, unfinished ones wrote none" if sweep
               else "copa: interrupted; nothing was tagged")
        return 130
    except Exception as e:  # a bug: one line by default, the traceback when debugging
        progress.close()
        if os.environ.get("COPA_DEBUG"):
            raise
        _error(f"copa: internal error: {type(e).__name__}: {e} (set COPA_DEBUG=1 for a traceback)")
        return 1


def run() -> NoReturn:
    """The `copa` command: main(), then out of the process without tearing the interpreter down.

    Python's own exit clears every module and frees their objects one by one: 25-40 ms with copa's modules loaded,
    a tenth of a small patch, for memory the kernel takes back at once. Everything of that exit that matters is
    done first: the atexit functions (the dataclass code cache, logging's flush, weakref finalizers) and the
    standard streams' flush. Only when the main thread is the last one: a thread still running gets Python's exit,
    which waits for it, and so does a stream that cannot be flushed (Python then reports it as before)."""
    code = main()
    if threading.active_count() == 1:
        atexit._run_exitfuncs()  # (they are cleared once run: sys.exit below would not run them twice)
        if all(_flushed(s) for s in (sys.stdout, sys.stderr)):
            os._exit(code)
    sys.exit(code)


def _flushed(stream: TextIO | None) -> bool:
    if stream is None:  # started with it closed
        return True
    try:
        stream.flush()
    except (OSError, ValueError):
        return False
    return True


def _write_out(write: Callable[[], object]) -> None:
    """The result on stdout, whose reader may be gone (`copa patch ... --json | head -1`): the image is already
    written, so a closed pipe ends the output quietly rather than the run with an error."""
    if sys.stdout is None:  # started with stdout closed
        return
    try:
        write()
        sys.stdout.flush()
    except (BrokenPipeError, ValueError):
        _silence(sys.stdout)


def _error(line: str) -> None:
    if sys.stderr is None:
        return
    try:
        print(line, file=sys.stderr, flush=True)
    except (BrokenPipeError, ValueError):
        _silence(sys.stderr)


def _silence(stream: TextIO) -> None:
    # Point the descriptor at /dev/null so the interpreter's final flush does not complain about the pipe either.
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, stream.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass
