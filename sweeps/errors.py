"""Every error a sweep raises for its user, and the sweep scripts' exit codes.

Why a leaf: the modules that find bad input (sweeps/plan.py, sweeps/storage.py, sweeps/resume.py ...) and the
one that turns it into a line on stderr (sweeps/cli.py: ``main``) both need these classes; kept here, the lower
modules raise without importing the command line, and ``sweeps/`` imports one way (docs/architecture.md,
section 2). Nothing of the project is imported but ``ConfigError``, the trainer's bad-input error.
"""

from __future__ import annotations

from ouvae.config import ConfigError


EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130
EXIT_RESULTS_NOT_WRITTEN = 1


class SweepError(RuntimeError):
    """The sweep cannot start (bad option, missing data, unreachable cluster or storage, name clash ...). The
    message says the fix."""


class SpaceError(ValueError):
    """A sweep specification that cannot run (sweeps/plan.py). The message names the option and how to fix it."""


class StorageUnreachable(RuntimeError):
    """A node of the cluster does not see the sweep's storage (a local path on a multi-node cluster): every trial
    on that node would fail alike, so it is not retried (sweeps/trainable.py: NOT_RETRIED)."""


class ResultsNotWritten(RuntimeError):
    """The results table stayed unwritable until the end of the experiment (sweeps/results.py: the sink holds the
    rows it could not write and retries): some rows exist only in the driver's memory. The message says what
    failed and which trials; sweeps/cli.py's ``main`` prints it as one line, exit code 1."""


# What sweeps/cli.py's ``main`` turns into one line on stderr and exit code 2: raised before Ray starts.
BAD_INPUT: tuple[type[Exception], ...] = (SweepError, SpaceError, ConfigError)
