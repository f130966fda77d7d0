"""Peak memory of one run, measured per run even when a worker process runs many runs in turn.

Why: with Ray's actor reuse one worker process trains trial after trial; the process's lifetime peak
(``ru_maxrss``) would report, for every trial, the largest trial that ran before it. So the owner of a run (the
command line, the sweep trainable) calls ``reset_peak_memory`` when the run starts, and the trainer reads
``peak_memory_bytes`` at each evaluation:

* CUDA: the caching allocator's peak (``torch.cuda.max_memory_allocated``), reset per run.
* CPU on Linux: the kernel's resident-set high-water mark ``VmHWM`` (/proc/self/status), reset per run by
  writing 5 to /proc/self/clear_refs (Linux >= 4.0), after returning the memory earlier runs freed to the kernel
  (glibc's ``malloc_trim``; without it the reset would start from the previous run's retained heap: measured, a
  small run after a 1.3 GB one reported 630 MB instead of 390 MB). This is the whole process's resident memory,
  so it includes the interpreter, torch and the data set, not only the model.
* Elsewhere (macOS, or /proc not writable): the process lifetime peak ``ru_maxrss`` (docs/operations.md, "Peak memory").

These are process-wide operations: the library's Trainer never calls ``reset_peak_memory`` itself.
"""

from __future__ import annotations

import ctypes
import gc
import resource
import sys
from pathlib import Path

import torch

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _vm_hwm_bytes() -> int | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024  # kB
    except (OSError, ValueError, IndexError):
        return None
    return None


def reset_peak_memory(device: torch.device) -> None:
    """Start a new peak for the run about to start on `device`."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    _return_freed_memory()
    try:
        _CLEAR_REFS.write_text("5")
    except OSError:
        pass  # not Linux, or not writable: peak_memory_bytes falls back to the lifetime peak


def _return_freed_memory() -> None:
    """Hand the heap that earlier runs freed back to the kernel, so the resident set is what is alive now."""
    gc.collect()
    try:
        ctypes.CDLL(None).malloc_trim(0)  # glibc; other C libraries lack it, and then nothing is returned
    except (AttributeError, OSError):
        pass


def peak_memory_bytes(device: torch.device) -> int:
    """The peak since the last reset_peak_memory (see the module docstring for what each device measures)."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    hwm = _vm_hwm_bytes()
    if hwm is not None:
        return hwm
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)  # Linux reports KiB, macOS bytes
