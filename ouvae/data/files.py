"""Finding a registered data set's files, and fetching them once per node into the cache.

What is pooch's and what is ours:
  * pooch (`pooch.retrieve`) downloads an official file into the cache through a temporary file that is moved
    into place only after its md5 matched, re-downloads a cached copy whose md5 is wrong, and computes the md5
    of cached files (`pooch.file_hash`). Mirrors are tried in order here, one `retrieve` per URL, because
    pooch's own retry repeats a single URL.
  * ours: the search order (the user's folders, the cache, Debian's package folder) -- pooch knows only its
    cache; the cross-process lock, so that concurrent trials on one node fetch once (pooch does not lock);
    and the one-line `DataError`s that name the node, the files, the folders searched and the fix. Files
    without a published checksum are checked for structure by the readers (`formats.py`).

Search order for a data set (the first folder that holds *all* its files wins, so files from two folders are
never mixed):
  1. ``<data_dir>/<name>/`` then ``<data_dir>/`` (user-supplied files; IDX files may be .gz or uncompressed),
  2. ``default_cache_dir()/<name>/`` ($OUVAE_DATA, else ~/.cache/ouvae),
  3. system folders of a Debian package (Fashion-MNIST: ``/usr/share/datasets/fashion-mnist/``),
  4. if ``download=True``: the official URLs (mirrors in order), into the cache folder, under a file lock.
Files in the cache under their official names are md5-checked on every load where a trusted md5 is known.
User-supplied and Debian files are checked for structure only: Debian recompresses the .gz files, so their
md5 differs from upstream although the images are the same.
"""

from __future__ import annotations

import os
import re
import socket
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

from .splits import DataError

# (connect, read) seconds per request: an unreachable mirror fails in seconds, a stalled one within a minute.
DOWNLOAD_TIMEOUT_S = (10, 60)
LOCK_FILE = ".ouvae-fetch.lock"  # in the data set's cache folder


@dataclass(frozen=True)
class RemoteFile:
    """One file of a data set: its official name, where to download it, and how to check it.

    md5 is None where no trusted checksum is published; the reader then verifies the structure instead.
    `alternatives` are other names accepted for user-supplied copies (uncompressed IDX, an extracted folder).
    """

    name: str
    urls: tuple[str, ...]
    md5: str | None = None
    alternatives: tuple[str, ...] = ()


@dataclass(frozen=True)
class Located:
    """A file the readers parse, and the sentence telling the user how to repair it when it is unusable."""

    path: Path
    fix: str
    remote: RemoteFile | None = None
    from_cache: bool = False

    def corrupt(self, problem: str) -> DataError:
        return DataError(f"{self.path}: {problem}. {self.fix}")


def default_cache_dir() -> Path:
    """$OUVAE_DATA if set, else ~/.cache/ouvae. Downloads go to <this>/<data set name>/."""
    env = os.environ.get("OUVAE_DATA")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "ouvae"


def node() -> str:
    """This machine's name, for errors a cluster user must trace to one worker."""
    return socket.gethostname()


def _located(path: Path, remote: RemoteFile, from_cache: bool) -> Located:
    url = remote.urls[0] if remote.urls else "its source"
    if from_cache:
        fix = f"Delete {path} and run again: it will be downloaded afresh from {url}."
    else:
        fix = f"Replace it with an intact copy (official source: {url})."
    return Located(path, fix, remote, from_cache)


def _locate_in(folder: Path, remote: RemoteFile, is_cache: bool) -> Located | None:
    for name in (remote.name, *remote.alternatives):
        p = folder / name
        if p.exists():
            return _located(p, remote, is_cache)
    return None


def _verify_cached(loc: Located) -> None:
    """md5 of an official-named file in the cache, where a trusted md5 is known."""
    import pooch

    remote = loc.remote
    if remote is None or not (loc.from_cache and remote.md5 and loc.path.name == remote.name and loc.path.is_file()):
        return
    got = pooch.file_hash(str(loc.path), alg="md5")
    if got != remote.md5:
        raise DataError(f"{loc.path}: md5 is {got} but the official file's is {remote.md5}; the download is corrupt "
                        f"or incomplete. Delete {loc.path} and run again to download it afresh from {remote.urls[0]}"
                        f" (or load with download=True, which replaces it). A copy you placed there yourself, e.g. "
                        f"recompressed, belongs in a data_dir folder instead: only the official file passes the "
                        f"cache's checksum.")


@contextmanager
def cache_lock(folder: Path) -> Iterator[None]:
    """Hold the cross-process lock of a data set's cache folder: one process per node locates-or-downloads at a
    time; the others wait and then find the files in place.

    filelock (a dependency of torch) rather than raw fcntl: it takes the lock with flock on POSIX and with
    msvcrt on Windows, offers a non-blocking first try (so a waiting process can say why it waits), and the
    operating system releases the lock when its holder dies, so a killed trial never leaves a stale lock.
    """
    import filelock

    try:
        folder.mkdir(parents=True, exist_ok=True)
        lock = filelock.FileLock(str(folder / LOCK_FILE))
        try:
            lock.acquire(timeout=0)
        except filelock.Timeout:
            print(f"ouvae.data: waiting for another process on {node()} fetching into {folder}", file=sys.stderr,
                  flush=True)
            lock.acquire()
    except OSError as e:
        raise DataError(f"on node {node()}: cannot create or lock the cache folder {folder} ({e}); set OUVAE_DATA "
                        f"to a writable folder, or put the files in a data_dir folder") from e
    try:
        yield
    finally:
        lock.release()


def _reason(e: Exception) -> str:
    """The part of a download error a user acts on: requests nests the OS error ("[Errno 111] Connection
    refused") three exceptions deep inside a long repr; HTTP and hash errors are short already."""
    text = str(e).replace("\n", " ")
    errno = re.search(r"\[Errno [^\]]+\] [^'\")]+", text)
    return errno.group(0).strip() if errno else f"{type(e).__name__}: {text}"


def _download(dataset: str, remote: RemoteFile, folder: Path, searched: str) -> Path:
    """folder/<name>, fetched from the first mirror that serves it with the right md5 (pooch); a cached copy
    with the right md5 is used as it is, one with a wrong md5 is downloaded again. `searched` (the folders
    looked in) goes into the error."""
    import pooch
    import requests

    known_hash = f"md5:{remote.md5}" if remote.md5 else None
    downloader = pooch.HTTPDownloader(timeout=DOWNLOAD_TIMEOUT_S, progressbar=False)
    errors = []
    for url in remote.urls:
        try:
            return Path(pooch.retrieve(url, known_hash, fname=remote.name, path=folder, downloader=downloader))
        except (requests.RequestException, ValueError, OSError) as e:  # ValueError: pooch's hash mismatch
            errors.append(f"{url}: {_reason(e)}")
    raise DataError(f"on node {node()}: {dataset}: no folder holds all its files (searched {searched}) and "
                    f"{remote.name} could not be downloaded ({'; '.join(errors)}). If this machine is offline, "
                    f"fetch {remote.urls[0]} elsewhere and put it in {folder}/ (or in data_dir).")


def find_files(name: str, files: Sequence[RemoteFile], data_dir: Path | None, download: bool, *,
               system_dirs: Sequence[str] = (), install_hint: str = "") -> dict[str, Located]:
    """The files of data set `name` keyed by official name, from the first folder holding all of them, else
    downloaded into the cache once per node (under `cache_lock`)."""
    cache = default_cache_dir() / name
    dirs = [(data_dir / name, False), (data_dir, False)] if data_dir is not None else []
    dirs += [(cache, True), *((Path(d), False) for d in system_dirs)]
    for folder, is_cache in dirs:
        found = [_locate_in(folder, f, is_cache) for f in files]
        if all(found):
            if is_cache and download:
                break  # through _download below, which also replaces a cached copy whose md5 is wrong
            for loc in found:
                _verify_cached(loc)
            return {f.name: loc for f, loc in zip(files, found) if loc is not None}
    searched = ", ".join(str(d) for d, _ in dirs)
    if not download:
        names = ", ".join(f.name for f in files)
        urls = "; ".join(f.urls[0] for f in files)
        hint = f" {install_hint}" if install_hint else ""
        raise DataError(f"on node {node()}: {name}: the file(s) {names} were not found (no folder holds all of "
                        f"them; searched {searched}) and download=False. Fix: download {urls} and put the file(s)"
                        f" in {cache}/ (or in data_dir), or load with download=True.{hint}")
    located = {}
    with cache_lock(cache):
        for f in files:
            loc = _locate_in(cache, f, True)  # another process may have fetched it while this one waited
            if loc is not None and loc.path.name != f.name:
                located[f.name] = loc  # a user's copy under another name (e.g. uncompressed): structure-checked
            else:
                located[f.name] = _located(_download(name, f, cache, searched), f, True)
    return located
