"""The run directory: resolved config, atomic artifact writes, finished/resume/overwrite rules."""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import logging
import os
import shutil
import socket
import sys
import time

import jax
import numpy as np

from jaxsynth import config as config_lib
from jaxsynth import files
from jaxsynth.errors import BusyError, CheckpointError

log = logging.getLogger(__name__)

CONFIG_FILE = config_lib.CONFIG_FILE
METRICS_FILE = "metrics.json"
RUN_ARTIFACTS = (CONFIG_FILE, METRICS_FILE, "log.jsonl", "predictions.npz", "checkpoints",
                 "tensorboard", "report.md", "samples", "grids", "candidates", "scores",
                 "filter_report.json", "plots", "mixture.json", "comparison.json", "model_card.json",
                 "model_card.md", "autoencoder")


def write_json(path: str, obj) -> None:
  """Atomically writes `obj` as indented JSON."""
  files.atomic_write(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def write_npz(path: str, **arrays) -> None:
  """Atomically writes numpy arrays to an .npz file."""
  buffer = io.BytesIO()
  np.savez(buffer, **arrays)
  files.atomic_write(path, buffer.getvalue())


def config_diff(old, new, prefix="") -> list[str]:
  """Lines "key: old -> new" for each key that differs between two resolved configs (dicts)."""
  keys = sorted(set(old) | set(new))
  out = []
  for k in keys:
    a, b = old.get(k, "<missing>"), new.get(k, "<missing>")
    if isinstance(a, dict) and isinstance(b, dict):
      out += config_diff(a, b, f"{prefix}{k}.")
    elif a != b:
      out.append(f"{prefix}{k}: {a!r} -> {b!r}")
  return out


def finished_results(workdir: str, config, overwrite: bool) -> dict | None:
  """The metrics of a run of this very config that `workdir` holds finished, else None.

  Rerunning a finished command is then a no-op that returns its results (a scheduler that
  relaunches a job killed after it finished gets success); another config, or --overwrite,
  goes on to `prepare`, which refuses or replaces it.
  """
  if overwrite or not workdir:
    return None
  try:
    with open(os.path.join(workdir, CONFIG_FILE), encoding="utf-8") as f:
      previous = json.load(f)
    with open(os.path.join(workdir, METRICS_FILE), encoding="utf-8") as f:
      metrics = json.load(f)
  except (OSError, ValueError):
    return None
  if config_diff(previous, json.loads(config_lib.to_json(config))):
    return None
  log.info("%s holds this run finished (%s); nothing to do. Pass --overwrite to run it again",
           workdir, METRICS_FILE)
  return metrics


def check_prepare(workdir: str, config, overwrite: bool) -> bool:
  """What `prepare` will find, without writing: True to resume; CheckpointError to refuse.

  Refused without `overwrite`: a finished run of another config, an unfinished run of another
  config, and a directory holding checkpoints but no config.json (they belong to some other
  run). A task calls this before its other checks, so a refusal leaves the workdir as it was.
  """
  if not workdir:
    raise CheckpointError("--workdir is required: the directory for this run's outputs")
  if overwrite:
    return False
  config_path = os.path.join(workdir, CONFIG_FILE)
  if os.path.exists(os.path.join(workdir, METRICS_FILE)):
    raise CheckpointError(f"{workdir} holds a finished run of another config ({METRICS_FILE} "
                          "exists); pass --overwrite to replace it or choose another --workdir")
  if not os.path.exists(config_path):
    if os.path.isdir(os.path.join(workdir, "checkpoints")):
      raise CheckpointError(f"{workdir} holds checkpoints/ but no {CONFIG_FILE}: they belong to "
                            "another run; choose another --workdir, or pass --overwrite")
    return False
  try:
    with open(config_path, encoding="utf-8") as f:
      previous = json.load(f)
  except (OSError, ValueError) as e:
    raise CheckpointError(f"{config_path} cannot be read ({e}); restore it, pass --overwrite, "
                          "or choose another --workdir") from None
  changes = config_diff(previous, json.loads(config_lib.to_json(config)))
  if changes:
    raise CheckpointError(
        f"{workdir} holds an unfinished run with another config ({'; '.join(changes[:5])}); "
        "rerun with the same config to resume, pass --overwrite, or choose another --workdir")
  return True


def prepare(workdir: str, config, overwrite: bool) -> bool:
  """Creates `workdir` and writes config.json; returns True when an unfinished run is resumed.

  A finished run (metrics.json present) is never touched without `overwrite`; an unfinished
  one resumes only with the same config (see `check_prepare`).
  """
  is_main = jax.process_index() == 0
  resuming = check_prepare(workdir, config, overwrite)
  if overwrite and os.path.isdir(workdir):
    if is_main:
      for name in RUN_ARTIFACTS:
        target = os.path.join(workdir, name)
        if os.path.isdir(target):
          shutil.rmtree(target)
        elif os.path.exists(target):
          os.remove(target)
    _barrier("jaxsynth-overwrite")
  # Several processes: all have looked before process 0 creates anything, so they all see the
  # same files (same `resuming`, same barriers above), whichever process is slower.
  _barrier("jaxsynth-prepare-checked")
  if is_main:
    os.makedirs(workdir, exist_ok=True)
    files.remove_stale_temporaries(workdir)
    write_json(os.path.join(workdir, CONFIG_FILE), json.loads(config_lib.to_json(config)))
  _barrier("jaxsynth-prepare")
  return resuming


def _barrier(name: str) -> None:
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(name)


LOCK_FILE = ".jaxsynth.lock"


class WorkdirLock:
  """An exclusive lock on a run directory, held while a command writes it.

  The lock is `DIR/.jaxsynth.lock`, flock()ed by the holder and naming its pid, host and
  command. The kernel drops an flock when its process dies (SIGKILL included), so a lock left
  by a dead process is taken over; on a filesystem without flock, a lock whose pid is gone on
  this host is taken over. On release the file is removed (and DIR too, if this lock created
  it and it is still empty), so a refused or failed command leaves the directory as it was.
  """

  def __init__(self, workdir: str):
    self.workdir = os.path.abspath(workdir)
    self.path = os.path.join(self.workdir, LOCK_FILE)
    self._fd = None
    self._created_dir = False

  def acquire(self) -> "WorkdirLock":
    """Takes the lock or raises BusyError naming the live holder (CheckpointError: bad DIR)."""
    if os.path.exists(self.workdir) and not os.path.isdir(self.workdir):
      raise CheckpointError(f"--workdir {self.workdir} is a file, not a directory; choose "
                            "another --workdir")
    if not os.path.isdir(self.workdir):
      os.makedirs(self.workdir)
      self._created_dir = True
    for _ in range(10):  # retried when the file is replaced between open and flock
      fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
      holder = _read_holder(fd)
      if not _try_flock(fd, holder):
        os.close(fd)
        self._undo_dir()
        raise BusyError(f"{self.workdir} is in use by {_describe(holder)}; wait for it to end "
                        "(or stop it), or choose another --workdir")
      try:
        same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
      except FileNotFoundError:
        same = False
      if same:
        break
      os.close(fd)
    else:
      raise BusyError(f"{self.path} keeps changing under this process; is another jaxsynth "
                      "starting on this --workdir?")
    if holder:
      log.warning("took over the lock of %s on %s: that process is gone", _describe(holder),
                  self.workdir)
    os.ftruncate(fd, 0)
    os.write(fd, json.dumps(_this_holder()).encode())
    os.fsync(fd)
    self._fd = fd
    return self

  def release(self) -> None:
    """Removes the lock file and releases the lock."""
    if self._fd is None:
      return
    try:
      os.remove(self.path)
    except OSError:
      pass
    os.close(self._fd)
    self._fd = None
    self._undo_dir()

  def _undo_dir(self) -> None:
    if self._created_dir:
      try:
        os.rmdir(self.workdir)  # only if still empty
      except OSError:
        pass
      self._created_dir = False

  def __enter__(self):
    return self.acquire()

  def __exit__(self, *exc):
    self.release()


def lock(workdir: str):
  """The lock of `workdir` for this command: taken by process 0 only on several hosts."""
  if jax.process_index() != 0:
    return contextlib.nullcontext()
  return WorkdirLock(workdir)


def _this_holder() -> dict:
  return {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(),
          "command": " ".join(sys.argv)[:300]}


def _read_holder(fd: int) -> dict:
  try:
    text = os.pread(fd, 4096, 0).decode("utf-8", "replace")
    holder = json.loads(text) if text.strip() else {}
    return holder if isinstance(holder, dict) else {}
  except (OSError, ValueError):
    return {}


def _try_flock(fd: int, holder: dict) -> bool:
  """Whether this process now holds `fd`'s lock (pid check where flock is unsupported)."""
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return True
  except BlockingIOError:
    return False
  except OSError:  # no flock here (some network filesystems): judge by the holder's pid
    return not (holder and holder.get("host") == socket.gethostname()
                and _pid_alive(int(holder.get("pid", -1))))


def _pid_alive(pid: int) -> bool:
  if pid <= 0:
    return False
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True


def _describe(holder: dict) -> str:
  if not holder:
    return "another process (its lock file is empty: it is just starting)"
  started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("started", 0)))
  return (f"pid {holder.get('pid')} on host {holder.get('host')} (started {started}: "
          f"{holder.get('command', '?')})")
