"""``python -m analysis RESULTS --watch``: analyse a sweep again whenever its table changes, until Ctrl-C.

Why polling a listing: the table is a folder of files (``<root>/sweep_id=<id>/<trial>.parquet``) that the sweep's
driver replaces whole, locally or on S3, and a listing (path, size, modification time) is the one change signal
both give without a second service. The watcher only lists and reads (each analysis is a snapshot,
``analysis.io.read_snapshot``), so it never blocks or slows the sweep beyond one listing per interval.

When it stops: on Ctrl-C (exit 0, one line), or after ``--watch-refreshes`` analyses. The table does not say that
a sweep has ended -- no marker is written, and the number of runs a sweep will have is not in the table (the
adaptive search adds runs as it goes; a crashed sweep is continued by ``--resume`` into the same table) -- so the
watcher cannot stop by itself when the sweep ends; it keeps waiting for rows until it is stopped.

While the table cannot be analysed yet (no file, no finished run), each new reason is printed once and watching
goes on: an analysis error of a live table is usually "not yet".
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import Callable

from analysis.errors import AnalysisError
from analysis.render import Report
from analysis.storage import ResultsLocation

# A listing of the table: (path, size, modification time) of every result file.
Listing = tuple[tuple[str, int, float], ...]


def listing(loc: ResultsLocation, sweeps: list[str] | tuple[str, ...] | None) -> Listing:
    """Every result file of ``sweeps`` (all sweeps present when empty) with its size and modification time."""
    chosen = list(sweeps) if sweeps else loc.find_sweeps()
    infos = [i for s in chosen for i in loc.list_files(s)]
    return tuple(sorted((i.path, int(i.size or 0), i.mtime.timestamp() if i.mtime else 0.0) for i in infos))


def watch(loc: ResultsLocation, sweeps: list[str] | tuple[str, ...] | None, analyse: Callable[[], Report], *,
          interval_s: float, refreshes: int | None = None, say: Callable[[str], None] = print,
          sleep: Callable[[float], None] | None = None) -> int:
    """Analyse whenever the listing changes; return the exit code (0). Ctrl-C ends it with one line.

    ``analyse`` runs the whole analysis and writes the report (atomically: analysis.report publishes a finished
    folder), so a browser reloading report.html always finds a whole report. ``refreshes``: stop after that many
    analyses (None: until Ctrl-C).
    """
    sleep = sleep or time.sleep
    seen: Listing | None = None
    last_error = ""
    done = 0
    report_path = None
    try:
        while refreshes is None or done < refreshes:
            try:
                now = listing(loc, sweeps)
                if now != seen:
                    seen = now
                    report = analyse()
                    done += 1
                    report_path = report.path
                    last_error = ""
                    say(f"[{datetime.now():%H:%M:%S}] {len(now)} result file(s):\n{report.text()}\n"
                        f"report: {report.path}")
                    continue
            except AnalysisError as exc:
                if str(exc) != last_error:
                    last_error = str(exc)
                    say(f"[{datetime.now():%H:%M:%S}] not analysed yet: {exc}; watching on")
            sleep(interval_s)
    except KeyboardInterrupt:
        say(f"stopped watching{f'; last report: {report_path}' if report_path else ''}")
    return 0
