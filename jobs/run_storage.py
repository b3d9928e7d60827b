"""The runs' storage (GENFLEET_STORAGE): where images live beside checkpoints and Ray results.

One root, a local folder, a shared volume or an `s3://` / `gs://` URI, reached through
pyarrow's file systems, the layer Ray Train writes its storage path with, so the dispatcher,
the dashboard and the CLI read the same files the runs wrote. Each job owns `<root>/<job id>`
and, for a sweep, `<root>/<job id>-<trial id>`; nothing of a job lies anywhere else, which is
what lets `genfleet delete` remove a job by its folders alone.

Images: `<job>/images/<job|trial-<t>>/<name>-<epoch>-<sha256 prefix>.png`. The digest in the
name means a file the index points at is never overwritten, by a copy of the run that lost its
lease or by a later epoch's report of the same image.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import threading
from collections import OrderedDict
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

import pyarrow.fs

from jobs.limits import LimitError

READ_CACHE_BYTES = 64 * 2**20  # the dashboard redraws a gallery on every rerun
JOB_ID = re.compile(r"^[A-Za-z0-9_]{1,64}$")  # jobs.queue draws 12 hex digits


class ImageUnreadable(OSError):
    """A stored file is missing, or its bytes are not the ones its index entry recorded."""


def located(uri: str) -> tuple[pyarrow.fs.FileSystem, str]:
    """The file system of `uri` (a URI or a local path) and the path in it.

    Local paths come out resolved, however they were spelled (`file://` or plain, through a
    symlink or not), so that one folder spelled two ways compares equal.
    """
    filesystem, path = pyarrow.fs.FileSystem.from_uri(
        uri if "://" in uri else str(Path(uri).absolute())
    )
    if isinstance(filesystem, pyarrow.fs.LocalFileSystem):
        path = str(Path(path).resolve())
    return filesystem, path


@dataclass(frozen=True)
class StoredFile:
    """Where a file lies under the root, and what it held when written."""

    path: str
    size: int
    sha256: str


def image_path(job_id: str, trial: str | None, name: str, epoch: int, sha256: str) -> str:
    owner = "job" if trial is None else f"trial-{trial}"
    return f"{job_folder(job_id)}/images/{owner}/{name}-{epoch:06d}-{sha256[:16]}.png"


def job_folder(job_id: str) -> str:
    """The job's own folder under the root; raises ValueError for an id that would reach out
    of it or into another job's (`..`, a `/`, a `-`, which separates a trial's folder)."""
    if not JOB_ID.fullmatch(job_id):
        raise ValueError(f"job id: must match {JOB_ID.pattern}, got {job_id!r}")
    return job_id


def belongs_to(job_id: str, path: str) -> bool:
    """Whether an index entry's path lies in the job's folder: Redis says where to read, and
    nothing it says may send a reader elsewhere."""
    parts = path.split("/")
    return parts[0] == job_id and ".." not in parts and "" not in parts


class RunStorage:
    def __init__(self, root: str) -> None:
        self.root = root
        try:
            self._filesystem, self._base = located(root)
        except pyarrow.ArrowInvalid as exc:  # an unknown scheme, a URI pyarrow cannot parse
            raise LimitError(
                f"GENFLEET_STORAGE: must be a folder or a URI pyarrow opens; {exc}"
            ) from None
        self._cache: OrderedDict[str, bytes] = OrderedDict()
        self._cached_bytes = 0
        self._lock = threading.Lock()  # one storage serves every dashboard session

    def _full(self, path: str) -> str:
        return f"{self._base.rstrip('/')}/{path}"

    def write(self, path: str, data: bytes) -> StoredFile:
        """Write `data` at `path` (relative to the root), a path named by its content: one
        already there with its size is kept, so a batch Redis refused and sends again does not
        upload it again, and a reader never meets it half written."""
        full = self._full(path)
        stored = StoredFile(path, len(data), hashlib.sha256(data).hexdigest())
        if self._filesystem.get_file_info(full).size == len(data):
            return stored
        self._filesystem.create_dir(full.rpartition("/")[0], recursive=True)
        if not isinstance(self._filesystem, pyarrow.fs.LocalFileSystem):
            with self._filesystem.open_output_stream(full) as stream:  # one object PUT: whole
                stream.write(data)
            return stored
        partial = f"{full}.{secrets.token_hex(4)}.partial"
        with self._filesystem.open_output_stream(partial) as stream:
            stream.write(data)
        self._filesystem.move(partial, full)  # a rename: whole or not there
        return stored

    def read(self, stored: StoredFile) -> bytes:
        """The file's bytes, checked against its size and sha256; raises ImageUnreadable."""
        with self._lock:
            cached = self._cache.get(stored.path)
            if cached is not None:
                self._cache.move_to_end(stored.path)
                return cached
        where = f"{self.root.rstrip('/')}/{stored.path}"
        try:
            with self._filesystem.open_input_file(self._full(stored.path)) as stream:
                data = stream.read()
        except (OSError, pyarrow.ArrowException) as exc:
            raise ImageUnreadable(f"{where}: cannot be read ({exc})") from exc
        if len(data) != stored.size or hashlib.sha256(data).hexdigest() != stored.sha256:
            raise ImageUnreadable(
                f"{where}: damaged ({len(data)} bytes, the index recorded {stored.size} "
                "bytes with another checksum)"
            )
        self._remember(stored.path, data)
        return data

    def _remember(self, path: str, data: bytes) -> None:
        with self._lock:
            self._forget(path)
            self._cache[path] = data
            self._cached_bytes += len(data)
            while self._cached_bytes > READ_CACHE_BYTES and self._cache:
                _, dropped = self._cache.popitem(last=False)
                self._cached_bytes -= len(dropped)

    def remove(self, path: str) -> None:
        """Remove one file; one that is gone already is fine."""
        with self._lock:
            self._forget(path)
        with suppress(FileNotFoundError):
            self._filesystem.delete_file(self._full(path))

    def remove_empty_folders(self, path: str) -> None:
        """Remove the folders above `path`, nearest first, as long as they are empty: what
        writing a file made and removing it left. Object stores have no empty folders."""
        folder = path.rpartition("/")[0]
        while folder:
            selector = pyarrow.fs.FileSelector(self._full(folder), allow_not_found=True)
            if self._filesystem.get_file_info(selector):
                return
            with suppress(FileNotFoundError, OSError):  # gone, or filled again meanwhile
                self._filesystem.delete_dir(self._full(folder))
            folder = folder.rpartition("/")[0]

    def folders_of(self, job_ids: set[str]) -> dict[str, list[str]]:
        """Each job's folders under the root, its own and its trials' (`<job id>-<trial>`),
        from one listing of the root however many jobs are asked about."""
        selector = pyarrow.fs.FileSelector(self._base, allow_not_found=True)
        found: dict[str, list[str]] = {job_id: [] for job_id in job_ids}
        for info in self._filesystem.get_file_info(selector):
            owner = info.base_name.partition("-")[0]
            if owner in found:
                found[owner].append(info.base_name)
        return {job_id: sorted(folders) for job_id, folders in found.items()}

    def remove_folder(self, folder: str) -> None:
        """Remove a folder under the root with everything in it; one that is gone is fine."""
        with self._lock:
            for path in [cached for cached in self._cache if cached.startswith(f"{folder}/")]:
                self._forget(path)
        with suppress(FileNotFoundError):  # another dispatcher may be removing it too
            self._filesystem.delete_dir(self._full(folder))

    def _forget(self, path: str) -> None:
        """Drop a path from the read cache; the caller holds the lock."""
        dropped = self._cache.pop(path, None)
        if dropped is not None:
            self._cached_bytes -= len(dropped)
