"""`copa bulk FILE` and `copa patch --config FILE`: the flags of a sweep, and the sweep from config to exit code.

copa/cli.py owns the parser and the error-to-exit-code turn; this module adds the sweep's flags to the patch
parser (`add_flags`), the `bulk` subcommand (`add_command`: the patch flags plus the FILE argument), and `run_sweep`,
which returns the exit code or raises a CopaError for the CLI to print.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from copa import events
from copa.errors import UsageError

if TYPE_CHECKING:
    from copa.api import PatchOptions

# Flags of a single `copa patch` that a sweep takes from its config instead, or cannot honour for many images.
_REFUSED = (("image", "-i"), ("tag", "-t"), ("output_tar", "--output-tar"), ("loader", "-l"), ("output", "-o"),
            ("platform", "--platform"))


def add_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE", help="patch every image a Copacetic PatchConfig names (as copa bulk)")
    p.add_argument("--scheduler", metavar="tcp://HOST:8786",
                   help="run the jobs of --config on this Dask scheduler (default: $DASK_SCHEDULER_ADDRESS, else "
                   "local worker processes)")
    p.add_argument("--workers", type=int, metavar="N", help="local worker processes for --config (default: cores)")


def add_command(sub: Any, patch_parser: argparse.ArgumentParser) -> None:
    """`copa bulk FILE`: the patch flags (those a sweep honours) plus the config file."""
    b = sub.add_parser("bulk", add_help=False, help="patch the images a PatchConfig names",
                       description="Patch every image a Copacetic PatchConfig (copa.sh/v1alpha1) names, on local "
                       "worker processes or a Dask cluster (--scheduler).")
    # Copies of the patch flags (argparse's parents= would share the Action objects, and the help changed below
    # would change `copa patch --help` too).
    for original in patch_parser._actions:
        b._add_action(copy.copy(original))
    b.add_argument("file", metavar="FILE", help="the PatchConfig YAML file")
    hidden = {attr for attr, _ in _REFUSED} | {"config", "tag_suffix", "format"}
    for action in b._actions:
        if action.dest in hidden:  # one image's flags: refused (or meaningless) in a sweep, so not offered
            action.help = argparse.SUPPRESS
        elif action.dest == "report":
            action.help = ("directory of scanner reports, each matched to the image it names (Trivy ArtifactName or "
                           "RepoDigests, Grype's target); images without one get every available update")
        elif action.dest == "timeout":
            action.help = "per job: a job running longer fails (seconds, or e.g. 5m; default 5m)"


def refuse_outside_sweep(args: argparse.Namespace) -> None:
    """--scheduler and --workers only mean something with --config."""
    if args.scheduler or args.workers is not None:
        flag = "--scheduler" if args.scheduler else "--workers"
        raise UsageError(f"{flag} runs the jobs of a PatchConfig: pass --config FILE, or drop {flag}")


def template_from(args: argparse.Namespace, options_from: Callable[[argparse.Namespace], PatchOptions]
                  ) -> PatchOptions:
    """Every job's options: the single-image flags, checked for a sweep (image, tag and platforms come from the
    config). `options_from` is the CLI's own flags-to-options function."""
    for attr, flag in _REFUSED:
        value = getattr(args, attr, None)
        if value:
            raise UsageError(f"{flag} names one image; with a PatchConfig the images, tags and platforms come "
                             "from the config: drop it")
    if not (args.push or args.oci_dir or args.dry_run):
        raise UsageError("a sweep writes with --push (to the target registry) or --oci-dir DIR (one layout for every "
                         "image), or plans with --dry-run: pass one")
    if args.report and not Path(args.report).is_dir():
        raise UsageError(f"-r {args.report}: with a PatchConfig, -r names a directory of reports, matched to images "
                         "by the image each names; pass a directory")
    if args.workers is not None and args.workers < 1:
        raise UsageError(f"--workers {args.workers}: at least one worker is needed")
    if args.workers is not None and args.scheduler:
        raise UsageError("--workers sizes the local pool; a --scheduler cluster has its own workers: drop one")
    # -r is the sweep's report directory (matched to jobs by the plan), not every job's report.
    return dataclasses.replace(options_from(_without_image(args)), report=None)


def _without_image(args: argparse.Namespace) -> argparse.Namespace:
    copy = argparse.Namespace(**vars(args))
    copy.image = ""
    return copy


def run_sweep(args: argparse.Namespace, options_from: Callable[[argparse.Namespace], PatchOptions],
              write_out: Callable[[Callable[[], object]], None]) -> int:
    # Imported here: the CLI builds its parser with this module for every command, and a single `copa patch`
    # should not pay for YAML, rich, multiprocessing and the sweep's machinery before its first request.
    from copa.api import registry_options
    from copa.bulk.config import load_config
    from copa.bulk.job import Job
    from copa.bulk.output import make_view, print_summary, sweep_error, sweep_json
    from copa.bulk.plan import plan
    from copa.bulk.runner import make_executor, run
    from copa.bulk.worker import FAILED, JobResult
    from copa.oci.registry import RegistryClient
    from copa.progress import make_reporter

    config_path = args.file if getattr(args, "file", None) else args.config
    if getattr(args, "file", None) and args.config:
        raise UsageError("copa bulk FILE takes the config as FILE: drop --config")
    template = template_from(args, options_from)
    config = load_config(config_path)
    stderr = sys.stderr
    # Planning (tag discovery, report matching) reports its steps as `copa patch` does; the sweep has its own view.
    steps = make_reporter(args.progress, stderr) if stderr else None
    try:
        with RegistryClient(registry_options(template)) as client:
            if steps is not None:
                with events.use(steps):
                    planned = plan(config, client, reports=Path(args.report) if args.report else None,
                                   scanner=args.scanner)
            else:
                planned = plan(config, client, reports=Path(args.report) if args.report else None,
                               scanner=args.scanner)
        unplanned: list[JobResult] = []
        for image in planned.images:
            if image.error is not None:
                if not template.ignore_errors:
                    raise image.error
                unplanned.append(JobResult(Job(image.name, image.name, ""), FAILED, error=str(image.error),
                                           exit_code=image.error.exit_code))
            for tag in image.missing:
                if steps is not None:
                    steps.step(f"{image.name}: tag {tag} is not in the registry; skipped", None)
            if image.note and steps is not None:
                steps.step(f"{image.name}: {image.note}", None)
    finally:
        if steps is not None:
            steps.close()
    jobs = planned.jobs
    view = make_view(args.progress, len(jobs), stderr)
    try:
        results = unplanned + run(jobs, template, make_executor(args.scheduler, args.workers), on_event=view)
    finally:
        view.close()
    if args.json:
        write_out(lambda: sys.stdout.write(json.dumps(sweep_json(results), indent=2) + "\n"))
    else:
        write_out(lambda: print_summary(results, sys.stdout))
    error = sweep_error(results)
    if error is not None:
        raise error
    return 0
