"""The training loop every model kind shares: steps, logging, validation, checkpoints, NaN guard."""

from __future__ import annotations

import contextlib
import dataclasses
import signal
import threading
from typing import Callable, Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxsynth import faults
from jaxsynth.errors import TrainingError
from jaxsynth.training.checkpoint import Checkpointer
from jaxsynth.training.writers import MetricWriter, Progress


@dataclasses.dataclass
class LoopSettings:
  """When the loop logs, validates and checkpoints, and how it picks the best checkpoint."""
  total_steps: int
  log_every: int
  eval_every: int
  checkpoint_every: int
  select_metric: str = ""
  select_mode: str = "max"

  @classmethod
  def from_train_config(cls, train_cfg, total_steps: int, steps_per_epoch: int,
                        select: bool = True) -> "LoopSettings":
    """`train.*`'s settings: validation every `eval_every` steps (0 = each epoch), checkpoints
    every `checkpoint_every` (0 = at each validation), the best by `select_metric` (when
    `select`, i.e. the run validates)."""
    eval_every = train_cfg.eval_every or steps_per_epoch
    return cls(total_steps=total_steps, log_every=train_cfg.log_every, eval_every=eval_every,
               checkpoint_every=train_cfg.checkpoint_every or eval_every,
               select_metric=train_cfg.select_metric if select else "",
               select_mode=train_cfg.select_mode)


class StopRequest:
  """Set by SIGTERM/SIGINT (or a test); the loop then checkpoints and stops between steps."""

  def __init__(self, at_step: int | None = None):
    self._event = threading.Event()
    self.at_step = at_step

  def set(self, *_):
    """Asks the loop to stop after the current step."""
    self._event.set()

  def __call__(self, step: int) -> bool:
    return self._event.is_set() or (self.at_step is not None and step >= self.at_step)


class Preempted(Exception):
  """Raised after a stop request once the state is checkpointed; rerun the command to resume."""


def _agreed_stop(stop: StopRequest, step: int, every: int) -> bool:
  """Whether to stop after `step`; on several hosts all agree, checked every `every` steps."""
  if jax.process_count() == 1:
    return stop(step)
  if step % every:
    return False
  from jax.experimental import multihost_utils
  flags = multihost_utils.process_allgather(np.array(stop(step)))
  return bool(np.any(flags))


def _is_better(value: float, best: float | None, mode: str) -> bool:
  if best is None:
    return True
  return value > best if mode == "max" else value < best


def _mean_scalars(pending: list[dict]) -> dict:
  host = jax.device_get(pending)
  keys = [k for k in host[0] if k != "finite"]
  return {k: float(np.mean([m[k] for m in host])) for k in keys}


def train_loop(state, step_fn: Callable, batches: Iterator, settings: LoopSettings,
               checkpointer: Checkpointer, writer: MetricWriter,
               evaluate_fn: Callable[[object], dict] | None = None,
               meta: dict | None = None, stop: StopRequest | None = None,
               periodic: Sequence[tuple[int, Callable[[int, object], None]]] = ()):
  """Runs `step_fn(state, batch) -> (state, metrics)` from state.step to total_steps.

  `metrics` must hold a boolean `finite`; the loop stops with TrainingError at the first
  check after it turns false and never checkpoints a non-finite state. Each `(every, fn)` of
  `periodic` runs `fn(step, state)` every `every` steps and at the last step (e.g. sample
  grids). Returns the final state and the meta dict of the last checkpoint: best validation
  value and step, and `train`, the mean scalars of the last logged window.
  """
  meta = dict(meta or {})
  stop = stop or StopRequest()
  step = int(jax.device_get(state.step))
  progress = Progress(settings.total_steps, step)
  pending: list[dict] = []
  healthy = jnp.array(True)
  last_saved = meta.get("step")

  def check_finite():
    if not bool(jax.device_get(healthy)):
      raise TrainingError(
          f"loss or gradients became NaN/Inf before step {step}; the last good checkpoint "
          f"(step {last_saved}) is intact in {checkpointer.latest.directory}. Lower "
          "train.learning_rate, set train.grad_clip, or check the data, then rerun")

  def save(which: str):
    nonlocal last_saved
    check_finite()
    meta.update(step=step, data_position=step)
    checkpointer.save(step, state, meta, which)
    if which == "latest":
      last_saved = step

  previous_handlers = _install_signal_handlers(stop)
  try:
    while step < settings.total_steps:
      batch = next(batches)
      state, metrics = step_fn(state, batch)
      step += 1
      healthy = jnp.logical_and(healthy, metrics["finite"])
      pending.append(metrics)
      last = step == settings.total_steps
      if step % settings.log_every == 0 or last:
        check_finite()
        scalars = _mean_scalars(pending)
        pending = []
        meta["train"] = dict(scalars)  # the last logged window, kept with the checkpoint
        progress.update(step, scalars)
        scalars["steps_per_s"] = progress.rate(step)
        writer.scalars(step, {f"train/{k}": v for k, v in scalars.items()})
      if evaluate_fn is not None and (step % settings.eval_every == 0 or last):
        check_finite()
        results = evaluate_fn(state)
        writer.scalars(step, {f"val/{k}": v for k, v in results.items()
                              if isinstance(v, (int, float))})
        value = results.get(settings.select_metric)
        if value is not None and np.isfinite(value) and _is_better(
            value, meta.get("best_value"), settings.select_mode):
          meta.update(best_value=float(value), best_step=step)
          save("best")
          faults.point("loop.between_best_and_latest")
      for every, fn in periodic:
        if every > 0 and (step % every == 0 or last):
          check_finite()
          fn(step, state)
      if step % settings.checkpoint_every == 0 or last:
        save("latest")
        faults.point("loop.after_checkpoint")
      if not last and _agreed_stop(stop, step, settings.log_every):
        save("latest")
        checkpointer.wait()
        raise Preempted(f"stopped at step {step} on request; the checkpoint is saved, "
                        "rerun the same command to resume")
  finally:
    _restore_signal_handlers(previous_handlers)
    checkpointer.wait()
  return state, meta


@contextlib.contextmanager
def handle_signals(stop: StopRequest):
  """Within the block, SIGTERM/SIGINT set `stop` instead of killing the process."""
  previous = _install_signal_handlers(stop)
  try:
    yield stop
  finally:
    _restore_signal_handlers(previous)


def _install_signal_handlers(stop: StopRequest):
  if threading.current_thread() is not threading.main_thread():
    return None
  return {sig: signal.signal(sig, stop.set) for sig in (signal.SIGTERM, signal.SIGINT)}


def _restore_signal_handlers(previous):
  for sig, handler in (previous or {}).items():
    signal.signal(sig, handler)
