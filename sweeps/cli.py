"""The sweep scripts' ``main``: parse, run, and turn bad input into one line on stderr and exit code 2.

Why here: every way a sweep can be asked for something impossible (sweeps/options.py, sweeps/space.py,
sweeps/preflight.py, sweeps/resume.py ...) raises one of ``BAD_INPUT`` *before* Ray starts or any trial runs, and
both scripts must report it the same way.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

from ouvae.config import ConfigError
from sweeps.space import SpaceError

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130


class SweepError(RuntimeError):
    """The sweep cannot start (bad option, missing data, unreachable cluster or storage, name clash ...). The
    message says the fix."""


BAD_INPUT: tuple[type[Exception], ...] = (SweepError, SpaceError, ConfigError)


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
    started yet), Ctrl-C exit code 130 with how to resume. Sets the driver's Tune environment
    (sweeps/compat.py) for this process; importing the sweeps package changes nothing."""
    from sweeps.compat import DRIVER_ENV

    cmd = CommandLine.parse(parser, sys.argv[1:] if argv is None else argv)
    for key, value in DRIVER_ENV.items():
        os.environ.setdefault(key, value)
    try:
        return run(cmd)
    except (*BAD_INPUT, *extra_errors) as e:
        return error_exit(str(e))
    except KeyboardInterrupt:
        print("\ninterrupted: resume with --resume --name <name> (printed above)", file=sys.stderr)
        return EXIT_INTERRUPTED
