"""Fault injection for the tests, in one place (no product module imports it).

Trial faults: trainables that wrap the real one (sweeps.trainable.train_ouvae) and make it
fail the way real trials fail. The product knows nothing of this module; tests hand these trainables to Tune or to
the scripts' ``main(argv, trainable=...)``.

* ``train_with_faults`` reads a plan from the trial config key ``FAULT`` (removed before the real trainable sees
  the config): ``crash_once(folder)`` raises a RuntimeError, ``kill_once(folder)`` SIGKILLs the worker process (what
  the kernel's out-of-memory killer does) -- each the first time a trial id has reported its first checkpointed
  evaluation (a marker file per trial id in `folder` remembers it across retries and processes);
* ``train_without_data`` fails every trial as a worker without the data files does (ouvae.data.DataError).

Storage faults: a full disk, an S3 server that answers with errors, storage that is gone for a
while -- each as a *window* the test opens and closes, so an outage of a minute is compressed into the steps
the test chooses, with no sleeps.

``FaultWindow.wrap(fn)`` returns ``fn`` failing while the window is open: it raises the window's error (after
writing a partial file where ``fn`` writes to a local path, as a disk that fills mid-write leaves one). The tests
patch the table's writer (``sweeps.results.pq.write_table``) with it; the product never sees this module.
"""

from __future__ import annotations

import errno
import os
import signal
from contextlib import contextmanager
from typing import Any, Callable, Iterator
from unittest import mock

from ray import tune

import sweeps.trainable
from ouvae.data import DataError

FAULT = "fault"
MISSING_DATA = "mnist: the file(s) train-images-idx3-ubyte.gz were not found on this worker (injected by the tests)"


class InjectedCrash(RuntimeError):
    """A failure a retry may not meet again (as a crash would be)."""


def crash_once(folder: str) -> dict[str, str]:
    return {"kind": "crash", "folder": folder}


def kill_once(folder: str) -> dict[str, str]:
    return {"kind": "kill", "folder": folder}


def train_with_faults(config: dict[str, Any]) -> None:
    config = dict(config)
    plan = config.pop(FAULT, None)
    if plan is None:
        return sweeps.trainable.train_ouvae(config)
    with _after_first_report(lambda: _once(plan)):
        return sweeps.trainable.train_ouvae(config)


def train_without_data(config: dict[str, Any]) -> None:
    def missing(cfg):
        raise DataError(MISSING_DATA)

    with mock.patch.object(sweeps.trainable, "_dataset", missing):
        return sweeps.trainable.train_ouvae(config)


# Tune records the trainable's name and restores a sweep only with a trainable of that name: a sweep started
# without data can then be resumed with the real trainable, as after the user fixed the data. (The qualified name
# stays: workers find the function by it, sweeps.testing.faults.train_without_data.)
train_without_data.__name__ = sweeps.trainable.train_ouvae.__name__


@contextmanager
def _after_first_report(fault: Callable[[], None]) -> Iterator[None]:
    """Run `fault` right after the trainable's first report in this run (that report has its checkpoint)."""
    report = tune.report
    reported = []

    def report_then_fault(*args: Any, **kwargs: Any) -> None:
        report(*args, **kwargs)
        if not reported:
            reported.append(True)
            fault()

    with mock.patch.object(sweeps.trainable.tune, "report", report_then_fault):
        yield


def _once(plan: dict[str, str]) -> None:
    trial_id = tune.get_context().get_trial_id()
    os.makedirs(plan["folder"], exist_ok=True)
    try:
        fd = os.open(os.path.join(plan["folder"], f"{trial_id}.failed"), os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return  # this trial failed once already: the retry runs clean
    os.close(fd)
    if plan["kind"] == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    raise InjectedCrash(f"injected crash of trial {trial_id} after its first checkpoint")


# ----- storage faults ------------------------------------------------------------------------------------------------
def disk_full() -> OSError:
    """What a write to a full disk raises (ENOSPC)."""
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def s3_error(status: int = 503) -> OSError:
    """What PyArrow's S3 client raises once its own retries give up on an HTTP error (500, 503 SlowDown, ...)."""
    code = {500: "INTERNAL_FAILURE", 503: "SLOW_DOWN"}.get(status, "UNKNOWN")
    return OSError(f"When uploading object: AWS Error {code} during PutObject operation: "
                   f"Please reduce your request rate. (HTTP status {status})")


def connection_dropped() -> OSError:
    """What PyArrow raises when the connection to S3 is reset (or the storage is gone) mid-request."""
    return OSError("When uploading object: AWS Error NETWORK_CONNECTION during PutObject operation: "
                   "curlCode: 56, Failure when receiving data from the peer")


class FaultWindow:
    """Calls of a wrapped function fail with ``error()`` while the window is open; ``injected`` counts them."""

    def __init__(self, error: Callable[[], BaseException]):
        self.error = error
        self.is_open = False
        self.injected = 0

    def open(self) -> None:
        self.is_open = True

    def close(self) -> None:
        self.is_open = False

    def wrap(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        def failing_while_open(*args: Any, **kwargs: Any) -> Any:
            if self.is_open:
                self.injected += 1
                where = args[1] if len(args) > 1 else kwargs.get("where")
                if isinstance(where, (str, os.PathLike)) and "://" not in str(where):
                    with open(where, "wb") as partial:  # the disk filled part-way through the file
                        partial.write(b"PAR1" + b"\0" * 100)
                raise self.error()
            return fn(*args, **kwargs)

        return failing_while_open
