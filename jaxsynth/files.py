"""Crash-safe file writes: a temporary file, fsync, rename; full-disk errors that name the path.

Every artifact of a run (config.json, metrics.json, predictions, grids, sweep shards and
manifests, checkpoint checksums) is written by `atomic_write`, so a kill at any instant leaves
either the old file or the new one, never a torn one, plus at most a stale temporary file
(`.tmp-<name>-XXXX`) that `remove_stale_temporaries` deletes when the run starts again.
"""

from __future__ import annotations

import errno
import hashlib
import io
import logging
import os
import shutil
import tempfile

import numpy as np

from jaxsynth import faults
from jaxsynth.errors import StorageError

log = logging.getLogger(__name__)

TEMP_PREFIX = ".tmp-"
# Errors that mean "no room": a full disk, a quota, a file-size limit (ulimit -f).
NO_SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
#: CPython 3.11 keeps the AST constructor's recursion depth in interpreter-wide state, so two
#: threads building ASTs at once (numpy parses every .npy header with ast.literal_eval) can fail
#: with a spurious "SystemError: AST constructor recursion depth mismatch" (python/cpython
#: #106905). It hit a study cell's reader threads; the error is transient, so reads retry it.
AST_RACE = "AST constructor recursion depth mismatch"


def free_bytes(path: str) -> int:
  """Free bytes on the filesystem holding `path` (or its nearest existing parent)."""
  path = os.path.abspath(path)
  while not os.path.exists(path) and os.path.dirname(path) != path:
    path = os.path.dirname(path)
  try:
    return shutil.disk_usage(path).free
  except OSError:
    return -1


def is_no_space(error: BaseException) -> bool:
  """Whether `error` (or an exception it was raised from) means the disk or a limit is full."""
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    if isinstance(error, OSError) and error.errno in NO_SPACE_ERRNOS:
      return True
    text = str(error)
    if any(s in text for s in ("No space left", "File too large", "Disk quota exceeded",
                               "RESOURCE_EXHAUSTED: Failed to write")):
      return True
    error = error.__cause__ or error.__context__
  return False


def no_space_error(path: str, nbytes: int, cause: BaseException | None = None,
                   reason: str = "") -> StorageError:
  """The one-line StorageError for a write of `nbytes` to `path` that did not fit."""
  reason = reason or getattr(cause, "strerror", None) or "no space left"
  free = free_bytes(path)
  free_text = f"{free:,} bytes are free there" if free >= 0 else "free space unknown"
  return StorageError(
      f"cannot write {path} ({reason}): it needs about {nbytes:,} bytes and {free_text}; "
      "what was saved before is intact: free space (or raise the file-size limit) and rerun "
      "the same command to resume")


def atomic_write(path: str, data: bytes, fault: str = "file.before_rename") -> None:
  """Writes `data` to a temporary file beside `path`, fsyncs it and renames it into place."""
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  if 0 <= free_bytes(directory) < len(data):
    raise no_space_error(path, len(data))
  fd, tmp = tempfile.mkstemp(dir=directory, prefix=f"{TEMP_PREFIX}{os.path.basename(path)}-")
  try:
    with os.fdopen(fd, "wb") as f:
      f.write(data)
      f.flush()
      os.fsync(f.fileno())
    os.chmod(tmp, 0o644)
    faults.point(fault)
    os.replace(tmp, path)
  except OSError as e:
    _remove_quietly(tmp)
    if e.errno in NO_SPACE_ERRNOS:
      raise no_space_error(path, len(data), e) from None
    raise
  except BaseException:
    _remove_quietly(tmp)
    raise
  _fsync_directory(directory)


def read_npz(data: bytes, tries: int = 5) -> dict:
  """{name: array} of every member of the .npz held in `data` (no pickles); a read that hits
  CPython's AST race (AST_RACE) is tried again, up to `tries` times."""
  for attempt in range(tries):
    try:
      with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        return {name: npz[name] for name in npz.files}
    except SystemError as e:
      if AST_RACE not in str(e) or attempt == tries - 1:
        raise
      log.warning("reading an .npz hit CPython's AST race (%s); reading it again", e)
  raise AssertionError("unreachable")


def sha256_file(path: str) -> str:
  """Hex SHA-256 of a file's bytes."""
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 22), b""):
      digest.update(block)
  return digest.hexdigest()


def remove_stale_temporaries(directory: str) -> list[str]:
  """Deletes the temporary files a killed `atomic_write` left in `directory`; returns them."""
  removed = []
  if not os.path.isdir(directory):
    return removed
  for name in sorted(os.listdir(directory)):
    path = os.path.join(directory, name)
    if name.startswith(TEMP_PREFIX) and os.path.isfile(path):
      _remove_quietly(path)
      removed.append(path)
  if removed:
    log.warning("removed %d temporary file(s) a killed write left in %s: %s", len(removed),
                directory, ", ".join(os.path.basename(p) for p in removed))
  return removed


def _remove_quietly(path: str) -> None:
  try:
    os.remove(path)
  except OSError:
    pass


def _fsync_directory(directory: str) -> None:
  """Makes a rename in `directory` durable (best effort: some filesystems refuse)."""
  try:
    fd = os.open(directory, os.O_RDONLY)
  except OSError:
    return
  try:
    os.fsync(fd)
  except OSError:
    pass
  finally:
    os.close(fd)
