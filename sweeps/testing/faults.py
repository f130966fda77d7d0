"""Storage faults for the tests: a full disk, an S3 server that answers with errors, storage that is gone for a
while -- each as a *window* the test opens and closes, so an outage of a minute is compressed into the steps
the test chooses, with no sleeps.

``FaultWindow.wrap(fn)`` returns ``fn`` failing while the window is open: it raises the window's error (after
writing a partial file where ``fn`` writes to a local path, as a disk that fills mid-write leaves one). The tests
patch the table's writer (``sweeps.results.pq.write_table``) with it; the product never sees this module.
"""

from __future__ import annotations

import errno
import os
from typing import Any, Callable


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
