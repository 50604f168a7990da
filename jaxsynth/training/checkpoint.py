"""Orbax checkpoints: the latest N for resuming, and the best one by a validation metric."""

from __future__ import annotations

import logging
import os
from typing import Any

import jax
import orbax.checkpoint as ocp

from jaxsynth.errors import CheckpointError

log = logging.getLogger(__name__)


class Checkpointer:
  """Saves (state, meta) under DIR/checkpoints/{latest,best}; meta holds the data position."""

  def __init__(self, workdir: str, keep: int):
    root = os.path.join(os.path.abspath(workdir), "checkpoints")
    self.latest = ocp.CheckpointManager(
        os.path.join(root, "latest"), item_names=("state", "meta"),
        options=ocp.CheckpointManagerOptions(max_to_keep=max(int(keep), 1), create=True))
    self.best = ocp.CheckpointManager(
        os.path.join(root, "best"), item_names=("state", "meta"),
        options=ocp.CheckpointManagerOptions(max_to_keep=1, create=True))

  def save(self, step: int, state, meta: dict[str, Any], which: str = "latest") -> None:
    """Saves (state, meta) as step `step` of `latest` or `best`; meta must be JSON-serialisable."""
    args = ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
    # The two managers' asynchronous finalisers share orbax's multi-host barrier names; one
    # saving while the other finalises fails on several hosts, so they take turns.
    self._manager("best" if which == "latest" else "latest").wait_until_finished()
    self._manager(which).save(step, args=args, force=True)

  def latest_step(self, which: str = "latest") -> int | None:
    """Step of the newest checkpoint in `latest` or `best`, or None."""
    return self._manager(which).latest_step()

  def restore(self, abstract_state, which: str = "latest", step: int | None = None):
    """Restores (state, meta) with the shardings of `abstract_state`."""
    manager = self._manager(which)
    step = manager.latest_step() if step is None else step
    if step is None:
      raise CheckpointError(f"no checkpoint in {manager.directory}; train first or check --workdir")
    target = jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract_state)
    try:
      out = manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()))
    except (ValueError, KeyError, TypeError) as e:
      raise CheckpointError(
          f"checkpoint {manager.directory}/{step} does not match this config's model "
          f"({type(e).__name__}: {str(e).splitlines()[0][:200]}); use the config it was "
          "trained with, or a new --workdir") from None
    return out.state, out.meta

  def resume(self, state):
    """(restored state, meta) from the newest `latest` checkpoint, or (state, {}) if none."""
    if self.latest_step() is None:
      return state, {}
    state, meta = self.restore(state)
    log.info("resuming from step %d", int(jax.device_get(state.step)))
    return state, meta

  def wait(self) -> None:
    """Blocks until asynchronous saves are on disk."""
    self.latest.wait_until_finished()
    self.best.wait_until_finished()

  def close(self) -> None:
    """Waits for pending saves and releases the managers."""
    self.latest.close()
    self.best.close()

  def _manager(self, which: str) -> ocp.CheckpointManager:
    if which not in ("latest", "best"):
      raise CheckpointError(f"unknown checkpoint {which!r}; use 'latest' or 'best'")
    return self.latest if which == "latest" else self.best
