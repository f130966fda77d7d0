"""Writing a local file whole or not at all: the one helper every writer of the project uses.

Why: a reader (the analysis scanning the results folder, a resume reading a checkpoint, a sweep reading its
options) must never see half a file, whatever crash happens mid-write. A temp file beside the target (the same
filesystem, so the rename is atomic) is filled, then ``os.replace``d onto the target. Object stores need no such
step: an object appears only once its upload completes (sweeps/storage.py, sweeps/results.py).

Imports only the standard library, so ``analysis`` (no torch) can use it.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any, Callable


def write_atomically(path: str | os.PathLike, write: Callable[[Path], Any]) -> Path:
    """`write(tmp)` fills a temp file beside `path`, which then replaces `path` in one rename; on any failure
    `path` is left as it was and the temp file is removed. Returns `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
