"""The sweep scripts' command line: the options both share, and ``main`` (bad input -> one line, exit code 2).

Why shared: ``critical_rho.py`` and ``anneal_search.py`` must accept the same trainer overrides, resources, cluster,
storage, resume and output options, and must refuse the same bad input the same way: every way a sweep can be
asked for something impossible (here, sweeps/plan.py, sweeps/resume.py ...) raises one of ``BAD_INPUT`` *before*
Ray starts or any trial runs, and ``main`` turns it into one line on stderr and exit code 2 (the errors and exit
codes: sweeps/errors.py).
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Collection, Mapping, Sequence

from ouvae.config import ConfigError, PRESETS, parse_assignment
from sweeps.compat import DRIVER_ENV, quiet_driver_logs, stop_signal, stop_signals
from sweeps.errors import (BAD_INPUT, EXIT_BAD_INPUT, EXIT_INTERRUPTED, EXIT_RESULTS_NOT_WRITTEN, ResultsNotWritten,
                           SweepError)


@dataclass(frozen=True)
class CommandLine:
    """The parsed options, the parser's defaults and which options the command line named (a value equal to the
    default still counts as named: ``--resume`` refuses it when the sweep was started with another)."""

    args: argparse.Namespace
    defaults: Mapping[str, Any]
    given: frozenset[str]

    @classmethod
    def parse(cls, parser: argparse.ArgumentParser, argv: Sequence[str]) -> "CommandLine":
        defaults = vars(parser.parse_args([]))
        # Start from a marker per option: argparse leaves an option's marker in place unless the command line
        # names it (an appending option copies its list, so a list marker is replaced too).
        markers = {k: [] if isinstance(v, list) else object() for k, v in defaults.items()}
        named = vars(parser.parse_args(list(argv), namespace=argparse.Namespace(**markers)))
        given = frozenset(k for k, v in named.items() if v is not markers[k])
        return cls(parser.parse_args(list(argv)), defaults, given)


def error_exit(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return EXIT_BAD_INPUT


def main(run: Callable[[CommandLine], int], parser: argparse.ArgumentParser, argv: Sequence[str] | None, *,
         extra_errors: tuple[type[Exception], ...] = ()) -> int:
    """A sweep script's main(): parse, run; bad input becomes one line on stderr and exit code 2 (nothing has
    started yet). SIGINT (Ctrl-C) or SIGTERM stops the sweep with its state saved; the run prints what finished
    and the --resume command, and the exit code is 128 + the signal's number (130, 143). Sets the driver's Tune
    environment and quiets Ray's notices (sweeps/compat.py) for this process; importing the package changes
    nothing."""
    cmd = CommandLine.parse(parser, sys.argv[1:] if argv is None else argv)
    for key, value in DRIVER_ENV.items():
        os.environ.setdefault(key, value)
    quiet_driver_logs()
    with stop_signals():
        try:
            code = run(cmd)
        except (*BAD_INPUT, *extra_errors) as e:
            return error_exit(str(e))
        except ResultsNotWritten as e:  # the storage stayed down past the experiment's end
            print(f"error: {e}", file=sys.stderr)
            return EXIT_RESULTS_NOT_WRITTEN
        except KeyboardInterrupt:
            print("\ninterrupted: resume with --resume --name <name> (printed above)", file=sys.stderr)
            return 128 + stop_signal() if stop_signal() else EXIT_INTERRUPTED
        stopped = stop_signal()
    return code if stopped is None else 128 + stopped


# ----- the options both scripts share -------------------------------------------------------------------------------
# Options that belong to *this invocation*, not to the sweep: they may differ on --resume.
# --results-dir is *not* one of them: the restored sink keeps writing where the sweep started.
RUNTIME_OPTIONS = ("address", "num_cpus", "num_gpus", "resume", "retry_failed", "no_report", "quiet", "storage",
                   "name")


def add_trainer_arguments(p: argparse.ArgumentParser, *, default_preset: str) -> None:
    g = p.add_argument_group("trainer")
    g.add_argument("--preset", default=default_preset,
                   help=f"named trainer preset, one of {sorted(PRESETS)} (default: {default_preset})")
    g.add_argument("--dataset", help="dataset name (default: the preset's), e.g. digits, mnist, fashion_mnist, or idx / "
                                     "npy for your own files in --data-dir")
    g.add_argument("--data-dir", help="folder (or .npz file for --dataset npy) with the data files; made absolute, "
                                      "since every trial runs in its own folder")
    g.add_argument("--epochs", type=int, help="training budget in epochs (default: the preset's)")
    g.add_argument("--steps", type=int, help="training budget in optimizer steps (overrides --epochs)")
    g.add_argument("--n-train", type=int, help="cap on training images (default: the preset's)")
    g.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="any trainer Config field, repeatable: --set eval_iw_k=100 --set smooth=encoder "
                        "--set hidden_units=100 (every field: docs/options.md, 'Config fields')")


def add_run_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("cluster and resources")
    g.add_argument("--address", default=os.environ.get("RAY_ADDRESS"),
                   help="Ray cluster to join: host:port of the head node, 'auto', or ray://host:10001 "
                        "(default: $RAY_ADDRESS, else start a local Ray in this process)")
    g.add_argument("--num-cpus", type=int, help="CPUs for the local Ray (default: all cores); ignored with --address")
    g.add_argument("--num-gpus", type=int, help="GPUs for the local Ray (default: detected); ignored with --address")
    g.add_argument("--cpus-per-trial", type=float, default=1.0, help="CPUs per trial (default 1)")
    g.add_argument("--gpus-per-trial", type=float, default=0.0,
                   help="GPUs per trial, fractional to pack trials on a GPU: 0.25 runs four per GPU (default 0)")
    g.add_argument("--max-concurrent", type=int, default=None,
                   help="at most this many trials at once (default: as many as resources allow)")
    g.add_argument("--max-failures", type=int, default=2,
                   help="retries of a crashed trial (killed worker, out of memory, I/O error) from its last "
                        "checkpoint before it is reported failed (default 2); configuration and data errors, "
                        "diverged runs and unreadable checkpoints are never retried")
    g.add_argument("--no-reuse-actors", dest="reuse_actors", action="store_false",
                   help="start a fresh worker process per trial (default: reuse workers, much less overhead)")
    s = p.add_argument_group("storage and resume")
    s.add_argument("--storage", default="results",
                   help="where everything goes: local path, NFS mount or s3://bucket/prefix (default: ./results). "
                        "Multi-node clusters need a location every node can reach (NFS or S3)")
    s.add_argument("--results-dir", default=None,
                   help="Parquet table root (default: <storage>/parquet); sweeps share it, one sweep_id=<name> each")
    s.add_argument("--name", default=None, help="sweep name = results sweep_id (default: <script>-<time>)")
    s.add_argument("--resume", action="store_true",
                   help="continue the sweep --name (default: the newest one in --storage) after a crash or Ctrl-C; "
                        "the sweep's own options are read back from its folder")
    s.add_argument("--retry-failed", action="store_true",
                   help="with --resume: also re-run trials that had failed, from their last checkpoint")
    o = p.add_argument_group("output")
    o.add_argument("--no-report", action="store_true", help="skip the analysis report at the end")
    o.add_argument("--quiet", action="store_true", help="no per-trial progress lines")


def fixed_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """Trainer overrides common to every trial: the shorthands plus every --set KEY=VALUE, typed by the
    Config field (a typo in a key fails here with a suggestion)."""
    out: dict[str, Any] = {}
    for text in args.overrides or ():
        try:
            key, value = parse_assignment(text)
        except ConfigError as e:
            raise SweepError(f"--set {text}: {e}") from None
        out[key] = value
    for key in ("dataset", "data_dir", "epochs", "steps", "n_train"):
        value = getattr(args, key, None)
        if value is not None:
            out[key] = value
    if out.get("data_dir"):  # Ray runs each trial in a folder of its own: a relative path would point nowhere
        out["data_dir"] = str(Path(out["data_dir"]).expanduser().resolve())
    return out


def refuse_idle_options(given: Collection[str], idle: Mapping[str, str]) -> None:
    """Refuse (SweepError) the first option the command line names that does nothing in the mode it chose: who
    writes --rung-factor 3 without --until-converged expects it to count. `idle`: option (its dest) -> the one line
    naming it, why it does nothing, and the fix."""
    for dest, message in idle.items():
        if dest in given:
            raise SweepError(message)


def idle_option(flag: str, role: str, fix: str) -> str:
    """The message of an option that does nothing: '<flag> <role>: <fix>, or drop <flag>'."""
    return f"{flag} {role}: {fix}, or drop {flag}"


def check_resource_options(args: argparse.Namespace) -> None:
    if not args.cpus_per_trial > 0:
        raise SweepError(f"--cpus-per-trial {args.cpus_per_trial} must be > 0 (fractions such as 0.5 are allowed)")
    if args.gpus_per_trial < 0:
        raise SweepError(f"--gpus-per-trial {args.gpus_per_trial} must be >= 0")
    if args.gpus_per_trial > 1 and args.gpus_per_trial != int(args.gpus_per_trial):
        raise SweepError(f"--gpus-per-trial {args.gpus_per_trial}: above 1 GPU use a whole number")
    if args.max_failures < 0:
        raise SweepError(f"--max-failures {args.max_failures} must be >= 0")
    if args.max_concurrent is not None and args.max_concurrent < 1:
        raise SweepError(f"--max-concurrent {args.max_concurrent} must be >= 1")
    if args.address:
        for flag, value in (("--num-cpus", args.num_cpus), ("--num-gpus", args.num_gpus)):
            if value is not None:
                raise SweepError(idle_option(flag, f"sizes the local Ray and does nothing when joining a cluster "
                                                   f"(--address {args.address}, or $RAY_ADDRESS)",
                                             "use the cluster's resources (--cpus-per-trial, --max-concurrent)"))
    if args.retry_failed and not args.resume:
        raise SweepError("--retry-failed re-runs the failed trials of an existing sweep: add --resume (and --name)")


def threads_per_trial(args: argparse.Namespace, fixed: Mapping[str, Any]) -> int:
    """torch threads = the CPUs a trial holds (at least 1), unless --set num_threads=... says otherwise."""
    if fixed.get("num_threads") is not None:
        return fixed["num_threads"]
    return max(1, int(args.cpus_per_trial))
