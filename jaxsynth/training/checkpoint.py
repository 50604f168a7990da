"""Orbax checkpoints that survive kills: the latest N for resuming, the best one by a metric.

A step is saved by orbax in the background (written to a temporary directory, renamed into
place when complete), then *committed*: `jaxsynth_checksums.json` beside its files records each
file's size and SHA-256. Older steps are deleted only after a newer one is committed, by
renaming them out of orbax's sight first, so a kill at any instant leaves every earlier
committed step whole.

On resume (`Checkpointer.resume`) the run reconciles what a kill may have left:
  - a step whose files do not match its checksums (truncated, bit-flipped) or that does not
    restore is moved to `checkpoints/quarantine/` with a warning, and the previous good step
    is used (an error only if none is good);
  - the resumed `latest` step must agree with `best`: the best step its meta names must be
    good, and `best` steps newer than it (a kill between the two saves) are removed; training
    replays them bit-identically and saves them again;
  - leftovers of killed saves and deletions (orbax temporary directories, half-deleted steps)
    are removed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import resource
import shutil
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from jaxsynth import faults, files
from jaxsynth.errors import CheckpointError, StorageError

log = logging.getLogger(__name__)

class _QuietOrbax(logging.Filter):
  """Orbax logs a full disk's traceback from each writer thread (Checkpointer.save reports it
  once, as a StorageError naming the path and the bytes needed) and a warning at every
  read-only open."""

  def filter(self, record: logging.LogRecord) -> bool:
    if record.exc_info and files.is_no_space(record.exc_info[1]):
      return False
    # Orbax warns at every read-only open (restoring another run's checkpoints): not news.
    return not ("read_only=True" in str(record.msg) or "is read only" in str(record.msg))


logging.getLogger("absl").addFilter(_QuietOrbax())

CHECKSUMS = "jaxsynth_checksums.json"
QUARANTINE = "quarantine"
DELETING = ".deleting-"   # prefix of a step directory being removed (not a step to orbax)
WHICH = ("latest", "best")


class Checkpointer:
  """Saves (state, meta) under DIR/checkpoints/{latest,best}; meta holds the data position.

  `read_only` opens another run's checkpoints for restoring: nothing there is created, moved
  or removed, and damaged steps are skipped (or refused), not quarantined.
  """

  def __init__(self, workdir: str, keep: int, read_only: bool = False):
    self.root = os.path.join(os.path.abspath(workdir), "checkpoints")
    self.keep = {"latest": max(int(keep), 1), "best": 1}
    self.read_only = read_only
    self._failed = False
    self._pending = None       # (which, step, bytes, best_step) of the save in flight
    self._anchor_best = None   # the best step the newest committed `latest` step refers to
    self.managers = {}
    for which in WHICH:
      directory = os.path.join(self.root, which)
      if not read_only and _is_main():
        _remove_leftovers(directory)
      self.managers[which] = ocp.CheckpointManager(
          directory, item_names=("state", "meta"),
          options=ocp.CheckpointManagerOptions(
              max_to_keep=None, create=not read_only, read_only=read_only,
              cleanup_tmp_directories=not read_only))
    self.latest, self.best = self.managers["latest"], self.managers["best"]

  # ------------------------------------------------------------------------------- saving

  def save(self, step: int, state, meta: dict[str, Any], which: str = "latest") -> None:
    """Starts saving (state, meta) as step `step` of `latest` or `best` (JSON meta).

    The write runs in the background; it is committed (checksums, then older steps pruned) when
    the next save starts or at `wait`/`close`. Until then a kill leaves the step uncommitted,
    which restore accepts only if it reads back whole.
    """
    manager = self._manager(which)
    if step in manager.all_steps():
      return  # saved already (a stop request on a checkpoint step): same state, same meta
    self._finish_pending()
    args = ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
    nbytes = _state_bytes(state)
    self._check_room(self._step_dir(which, step), nbytes)
    with self._reporting_no_space(which, step, nbytes):
      manager.save(step, args=args, force=True)
    self._pending = (which, step, nbytes, meta.get("best_step"))
    faults.point("checkpoint.save_in_flight")

  def _finish_pending(self) -> None:
    """Waits for the save in flight, commits it and prunes what it makes redundant."""
    if self._pending is None:
      return
    which, step, nbytes, best_step = self._pending
    self._pending = None
    with self._reporting_no_space(which, step, nbytes):
      self._manager(which).wait_until_finished()
    faults.point("checkpoint.before_commit")
    self._commit(which, step)
    if which == "latest":
      self._anchor_best = best_step
    self._prune()

  @contextlib.contextmanager
  def _reporting_no_space(self, which: str, step: int, nbytes: int):
    """Turns orbax's full-disk failures into one StorageError naming the step and its size."""
    try:
      yield
    except Exception as e:  # pylint: disable=broad-except
      self._failed = True
      if files.is_no_space(e):
        raise files.no_space_error(self._step_dir(which, step), nbytes, e) from None
      raise

  def _check_room(self, path: str, nbytes: int) -> None:
    """StorageError before orbax writes anything when the state cannot fit."""
    needed = int(nbytes * 1.05) + (1 << 20)  # the arrays, plus orbax's metadata files
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]  # ocdbt packs the arrays in one file
    free = files.free_bytes(path)
    reason = ""
    if 0 <= free < needed:
      reason = "no space left"
    elif limit not in (resource.RLIM_INFINITY, -1) and limit < nbytes:
      reason = f"over the file-size limit of {limit:,} bytes (ulimit -f)"
    if reason:
      self._failed = True
      raise files.no_space_error(path, needed, reason=reason)

  def _commit(self, which: str, step: int) -> None:
    if _is_main():
      path = self._step_dir(which, step)
      record = json.dumps(_checksums(path), indent=1, sort_keys=True).encode()
      try:
        files.atomic_write(os.path.join(path, CHECKSUMS), record, fault="file.before_rename")
      except StorageError:
        self._failed = True
        raise
    _barrier(f"jaxsynth-commit-{which}")

  def _prune(self) -> None:
    """Deletes committed steps beyond `keep` (best: also keeps the step `latest` refers to)."""
    if _is_main():
      for which in WHICH:
        steps = sorted(self._manager(which).all_steps())
        keep = set(steps[-self.keep[which]:])
        if which == "best" and self._anchor_best is not None:
          keep.add(int(self._anchor_best))
        for step in steps:
          if step not in keep:
            self._delete(which, step)
    _barrier("jaxsynth-prune")
    self._reload()

  def _delete(self, which: str, step: int) -> None:
    """Renames a step out of orbax's sight (atomic), then removes it."""
    path = self._step_dir(which, step)
    doomed = os.path.join(os.path.dirname(path), f"{DELETING}{step}-{os.getpid()}")
    os.rename(path, doomed)
    faults.point("checkpoint.prune")
    shutil.rmtree(doomed, ignore_errors=True)

  # ---------------------------------------------------------------------------- restoring

  def latest_step(self, which: str = "latest") -> int | None:
    """Step of the newest checkpoint in `latest` or `best`, or None."""
    return self._manager(which).latest_step()

  def restore(self, abstract_state, which: str = "latest", step: int | None = None):
    """Restores (state, meta) with the shardings of `abstract_state`, checksums verified.

    Without `step`, a damaged newest `latest` step is skipped with a warning for the previous
    good one; a damaged `best` or explicit step is a CheckpointError.
    """
    self._finish_pending()
    manager = self._manager(which)
    steps = sorted(manager.all_steps(), reverse=True) if step is None else [int(step)]
    if not steps:
      raise CheckpointError(f"no checkpoint in {manager.directory}; train first or check "
                            "--workdir")
    if step is not None and step not in manager.all_steps():
      raise CheckpointError(f"no step {step} in {manager.directory} (steps: "
                            f"{sorted(manager.all_steps())}); it was removed or never saved")
    problems = []
    for candidate in steps:
      restored, problem = self._try_restore(abstract_state, which, candidate)
      if restored is not None:
        if problems:
          log.warning("restored %s/%d instead: %s", manager.directory, candidate,
                      "; ".join(problems))
        return restored
      problems.append(problem)
      if which == "best" or step is not None:
        break
      log.warning("%s; trying the previous checkpoint", problem)
    raise CheckpointError(f"no good checkpoint in {manager.directory}: {'; '.join(problems)}; "
                          "rerun training with --overwrite (or restore the files)")

  def resume(self, state):
    """(restored state, meta) from the newest consistent `latest` step, or (state, {}) if none.

    Reconciles what a kill or damage left (see the module docstring); never fatal unless a
    good checkpoint does not fit this config's model.
    """
    if self.read_only:
      raise CheckpointError(f"{self.root} is open read only; it cannot be resumed")
    chosen, restored, damaged = None, None, []
    for step in sorted(self.latest.all_steps(), reverse=True):
      result, problem = self._try_restore(state, "latest", step)
      if result is None:
        damaged.append((step, problem))
        continue
      best_step = result[1].get("best_step")
      if best_step is not None and not self._good_best(int(best_step)):
        log.warning("latest checkpoint %d refers to best checkpoint %s, which is missing or "
                    "damaged; resuming from an earlier checkpoint to make it again", step,
                    best_step)
        continue
      chosen, restored = step, result
      break
    if damaged and chosen is None and len(damaged) == len(self.latest.all_steps()):
      raise CheckpointError(  # nothing is moved: the files stay as they are for inspection
          f"no good checkpoint in {self.latest.directory}: "
          + "; ".join(p for _, p in damaged[:3])
          + "; restore the files, or pass --overwrite to train from the start")
    for step, problem in damaged:
      log.warning("%s; moved to %s, resuming from an earlier checkpoint", problem,
                  self._quarantine("latest", step))
    self._discard_after(chosen)
    if chosen is None:
      return state, {}
    self._anchor_best = restored[1].get("best_step")
    self._prune()  # a step committed only now (a kill before its commit) prunes as save would
    log.info("resuming from step %d", chosen)
    return restored

  def _good_best(self, step: int) -> bool:
    if step not in self.best.all_steps():
      return False
    problem = self._verify("best", step)
    if problem:
      log.warning("%s; moved to %s", problem, self._quarantine("best", step))
      return False
    return True

  def _discard_after(self, step: int | None) -> None:
    """Removes the steps a resume from `step` (None: from scratch) will save again."""
    floor = -1 if step is None else step
    removed = []
    if _is_main():
      for which in WHICH:
        for s in sorted(self._manager(which).all_steps()):
          if s > floor:
            self._delete(which, s)
            removed.append(f"{which}/{s}")
    _barrier("jaxsynth-discard")
    self._reload()
    if removed:
      log.warning("removed checkpoints %s saved after the resumed step %s (a kill between "
                  "saves); training makes them again", ", ".join(removed), floor)

  def _try_restore(self, abstract_state, which: str, step: int):
    """((state, meta), None), or (None, problem) for a damaged step; mismatch raises."""
    problem = self._verify(which, step)
    if problem:
      return None, problem
    path = self._step_dir(which, step)
    verified = os.path.exists(os.path.join(path, CHECKSUMS))
    target = jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract_state)
    try:
      out = self._manager(which).restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()))
    except (ValueError, KeyError, TypeError) as e:
      if not verified:
        return None, f"checkpoint {path} cannot be read ({_first_line(e)})"
      raise CheckpointError(
          f"checkpoint {path} does not match this config's model "
          f"({type(e).__name__}: {_first_line(e)}); use the config it was "
          "trained with, or a new --workdir") from None
    except Exception as e:  # pylint: disable=broad-except  (tensorstore, zarr, json errors)
      return None, f"checkpoint {path} cannot be read ({type(e).__name__}: {_first_line(e)})"
    if not verified and not self.read_only:
      self._commit(which, step)  # a kill fell between orbax's finalisation and the commit
    return (out.state, out.meta), None

  def _verify(self, which: str, step: int) -> str:
    """'' when the step's files match its checksums (or it has none yet), else the problem."""
    path = self._step_dir(which, step)
    record_path = os.path.join(path, CHECKSUMS)
    if not os.path.exists(record_path):
      return ""
    try:
      with open(record_path, encoding="utf-8") as f:
        expected = json.load(f)
    except (OSError, ValueError) as e:
      return f"checkpoint {path}: its {CHECKSUMS} is unreadable ({_first_line(e)})"
    actual = _checksums(path)
    for name in sorted(set(expected) | set(actual)):
      if name not in actual:
        return f"checkpoint {path} is damaged: {name} is missing"
      if expected.get(name) != actual[name]:
        what = ("is truncated or extended" if name in expected
                and expected[name]["size"] != actual[name]["size"] else "has changed bytes")
        if name not in expected:
          what = "is not among its recorded files"
        return f"checkpoint {path} is damaged: {name} {what}"
    return ""

  def _quarantine(self, which: str, step: int) -> str:
    """Moves a damaged step to checkpoints/quarantine/ (kept for inspection); returns where."""
    source = self._step_dir(which, step)
    target = os.path.join(self.root, QUARANTINE, f"{which}-{step}")
    if _is_main():
      os.makedirs(os.path.dirname(target), exist_ok=True)
      k = 1
      while os.path.exists(target):
        k += 1
        target = os.path.join(self.root, QUARANTINE, f"{which}-{step}-{k}")
      os.rename(source, target)
    _barrier("jaxsynth-quarantine")
    self._reload()
    return target

  # ------------------------------------------------------------------------------- misc

  def wait(self) -> None:
    """Blocks until the save in flight is on disk and committed."""
    self._quietly_if_failed(self._finish_pending)

  def close(self) -> None:
    """Commits the save in flight and releases the managers."""
    self._quietly_if_failed(self._finish_pending)
    for manager in self.managers.values():
      self._quietly_if_failed(manager.close)

  def _quietly_if_failed(self, fn) -> None:
    """Runs fn; after a failed save its error is already reported, so a second one is dropped."""
    failed_before = self._failed
    try:
      fn()
    except Exception:  # pylint: disable=broad-except
      if not failed_before:
        raise

  def _reload(self) -> None:
    for manager in self.managers.values():
      manager.reload()

  def _step_dir(self, which: str, step: int) -> str:
    return os.path.join(str(self._manager(which).directory), str(int(step)))

  def _manager(self, which: str) -> ocp.CheckpointManager:
    if which not in WHICH:
      raise CheckpointError(f"unknown checkpoint {which!r}; use 'latest' or 'best'")
    return self.managers[which]


def _checksums(step_dir: str) -> dict:
  """{relative path: {"size", "sha256"}} of every file of a step but the checksum record."""
  out = {}
  for parent, _, names in os.walk(step_dir):
    for name in names:
      path = os.path.join(parent, name)
      rel = os.path.relpath(path, step_dir)
      if rel == CHECKSUMS or name.startswith(files.TEMP_PREFIX):
        continue
      out[rel] = {"size": os.path.getsize(path), "sha256": files.sha256_file(path)}
  return out


def _remove_leftovers(directory: str) -> None:
  """Half-deleted steps of a killed prune (orbax removes its own temporary directories)."""
  if not os.path.isdir(directory):
    return
  for name in os.listdir(directory):
    if name.startswith(DELETING):
      shutil.rmtree(os.path.join(directory, name), ignore_errors=True)
      log.warning("removed %s, left by a deletion a kill interrupted", name)


def _state_bytes(state) -> int:
  return int(sum(np.prod(x.shape) * x.dtype.itemsize for x in jax.tree.leaves(state)
                 if hasattr(x, "shape")))


def _first_line(error: BaseException) -> str:
  text = str(error).strip().splitlines()
  return (text[0] if text else type(error).__name__)[:200]


def _is_main() -> bool:
  return jax.process_index() == 0


def _barrier(name: str) -> None:
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
    multihost_utils.sync_global_devices(name)
