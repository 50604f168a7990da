"""Sampling sweeps: class budgets, the deterministic sample list, and the sharded, resumable loop
that writes `samples/shard-NNNNN.npz` and `manifest.json` (format: data/synthetic_format.py).

The sweep is a fixed list of N samples: sample i has label `labels[i]` (an interleaved
enumeration of the class budget) and its randomness comes from fold_in(root_key, i) inside the
sampler, so sample i is the same image whatever the batch size, the device count or where a
killed sweep resumed. Shard k holds samples [k·S, min((k+1)·S, N)) and belongs to process
k mod P; a finished shard is never rewritten, so a resumed sweep has no gap and no duplicate.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Callable

import jax
import numpy as np

from jaxsynth.data import synthetic_format
from jaxsynth.errors import CheckpointError, ConfigError, DataError
from jaxsynth.training import parallel
from jaxsynth.training.loop import Preempted, StopRequest, handle_signals
from jaxsynth.training.writers import Progress

BUDGETS = ("counts", "balance", "ratio")


def largest_remainder(total: int, weights) -> np.ndarray:
  """Splits `total` into integers proportional to `weights` that sum exactly to `total`."""
  weights = np.asarray(weights, np.float64)
  exact = total * weights / weights.sum()
  counts = np.floor(exact).astype(np.int64)
  # Hand the remaining units to the largest remainders (ties to the lower class index).
  order = np.argsort(-(exact - counts), kind="stable")
  counts[order[:total - int(counts.sum())]] += 1
  return counts


def class_budget(sample_cfg, num_classes: int, train_counts=None) -> np.ndarray:
  """Samples to draw per class, from sample.budget = counts | balance | ratio."""
  budget = sample_cfg.budget
  if budget == "counts":
    counts = np.asarray(tuple(sample_cfg.class_counts), np.int64)
    if counts.shape != (num_classes,) or np.any(counts < 0):
      raise ConfigError(f"config key 'sample.class_counts' = {tuple(sample_cfg.class_counts)} "
                        f"must give one count >= 0 for each of the {num_classes} classes")
  elif budget == "balance":
    have = np.asarray(train_counts, np.int64)
    if have.shape != (num_classes,):
      raise ConfigError(f"sample.budget=balance needs the train split's {num_classes} class "
                        f"counts, got {have.tolist()}")
    target = int(sample_cfg.per_class) or int(have.max())
    counts = np.maximum(target - have, 0)
  elif budget == "ratio":
    ratio = np.asarray(tuple(sample_cfg.ratio), np.float64)
    if ratio.shape != (num_classes,) or np.any(ratio < 0) or not ratio.sum() > 0:
      raise ConfigError(f"config key 'sample.ratio' = {tuple(sample_cfg.ratio)} must give one "
                        f"weight >= 0 for each of the {num_classes} classes, e.g. (0.3, 0.7)")
    if int(sample_cfg.total) < 1:
      raise ConfigError(f"config key 'sample.total' = {sample_cfg.total}: sample.budget=ratio "
                        "needs the total number of samples, e.g. --config.sample.total=1000")
    counts = largest_remainder(int(sample_cfg.total), ratio)
  else:
    raise ConfigError(f"config key 'sample.budget' has bad value {budget!r}: use one of "
                      f"{', '.join(BUDGETS)}")
  if counts.sum() == 0:
    raise ConfigError(f"sample.budget={budget} asks for no samples at all (per class "
                      f"{counts.tolist()}); raise sample.per_class, class_counts or total")
  return counts


def label_order(counts) -> np.ndarray:
  """labels[i] of global sample i: classes interleaved in proportion to their counts."""
  # Class c's k-th sample sits at "time" (k + 1/2)/n_c; sorting by time (ties by class) spreads
  # every class evenly over the list, so any prefix of the sweep is nearly in budget.
  counts = np.asarray(counts, np.int64)
  labels = np.repeat(np.arange(counts.size), counts)
  rank = np.concatenate([np.arange(n) for n in counts]) if counts.size else np.zeros(0)
  times = (rank + 0.5) / np.maximum(counts[labels], 1)
  return labels[np.lexsort((labels, times))]


def to_uint8(images, mean, std) -> np.ndarray:
  """Normalised float images -> uint8 (x·std + mean, scaled to [0, 255], rounded, clipped);
  mean and std are scalars or per-channel arrays."""
  pixels = (np.asarray(images, np.float32) * np.float32(std) + np.float32(mean)) * 255.0
  return np.clip(np.rint(pixels), 0, 255).astype(np.uint8)


@dataclasses.dataclass(frozen=True)
class Plan:
  """The fixed sample list of a sweep and its split into shards."""
  labels: np.ndarray      # (N,) label of each global sample index
  shard_size: int

  @property
  def num_shards(self) -> int:
    return -(-len(self.labels) // self.shard_size)

  def shard_range(self, k: int) -> tuple[int, int]:
    """[start, stop) global indices of shard k."""
    k = int(k)
    return k * self.shard_size, min((k + 1) * self.shard_size, len(self.labels))

  def entry(self, k: int) -> dict:
    """The manifest entry of shard k."""
    start, stop = self.shard_range(k)
    return {"file": synthetic_format.shard_filename(k), "count": int(stop - start)}


def _local_rows(array: jax.Array) -> np.ndarray:
  """This process's rows of a batch-sharded global array, in order."""
  if jax.process_count() == 1:
    return np.asarray(jax.device_get(array))
  pieces = {}
  for shard in array.addressable_shards:
    pieces.setdefault(shard.index[0].start or 0, np.asarray(shard.data))
  return np.concatenate([pieces[k] for k in sorted(pieces)])


def _allgather_max(values: np.ndarray) -> np.ndarray:
  """Element-wise max of `values` over processes (itself on one process)."""
  if jax.process_count() == 1:
    return values
  from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
  return np.max(multihost_utils.process_allgather(values), axis=0)


def finished_shards(directory: str, plan: Plan, owned: list[int]) -> np.ndarray:
  """Flags (num_shards,) of the `owned` shards already on disk, checked against the plan."""
  done = np.zeros(plan.num_shards, np.int32)
  for k in owned:
    entry = plan.entry(k)
    if not os.path.exists(os.path.join(directory, entry["file"])):
      continue
    labels, index = synthetic_format.read_shard_labels(directory, entry)
    start, stop = plan.shard_range(k)
    if not (np.array_equal(index, np.arange(start, stop))
            and np.array_equal(labels, plan.labels[start:stop])):
      raise DataError(f"shard {os.path.join(directory, entry['file'])} does not hold samples "
                      f"{start}..{stop - 1} of this sweep's plan: the sweep settings changed; "
                      "rerun with --overwrite or choose another --workdir")
    done[k] = 1
  return done


def run_sweep(sampler: Callable, params, root_key: jax.Array, plan: Plan, directory: str, *,
              batch_size: int, mesh, mean, std, manifest: dict,
              stop: StopRequest | None = None) -> dict:
  """Draws every unfinished shard of `plan` into `directory`; returns the final manifest.

  `sampler(params, labels, global_indices, root_key)` is make_sampler's jitted function over
  `mesh`; `manifest` holds num_classes, image_shape and any provenance to record. Process p
  fills its own shards (k mod P == p) from its slice of each global batch; process 0 rewrites
  manifest.json after every finished shard. A stop request (SIGTERM/SIGINT or `stop`, asked
  with the number of finished shards) raises Preempted once the finished shards are listed.
  """
  stop = stop or StopRequest()
  pid, nproc = jax.process_index(), jax.process_count()
  parallel.check_batch_divisible(batch_size, mesh, "sample.batch_size")
  local_batch = batch_size // nproc
  owned = [k for k in range(plan.num_shards) if k % nproc == pid]
  done = _allgather_max(finished_shards(directory, plan, owned))
  pending = [k for k in owned if not done[k]]
  # This process's queue of (shard, global index); every process runs the same number of
  # batches (the most any needs), padding its slice once its queue is empty.
  queue = [(k, i) for k in pending for i in range(*plan.shard_range(k))]
  num_batches = int(_allgather_max(np.array([-(-len(queue) // local_batch)]))[0])
  sharding = parallel.batch_sharding(mesh)
  total = len(plan.labels)
  progress = Progress(total, int(sum(plan.entry(k)["count"] for k in np.flatnonzero(done))),
                      unit="image")
  buffers: dict[int, list] = {}

  def write_manifest(complete: bool) -> None:
    if pid == 0:
      entries = [plan.entry(k) for k in np.flatnonzero(done)]
      synthetic_format.write_manifest(directory, {**manifest, "shards": entries,
                                                  "complete": complete})

  write_manifest(bool(done.all()))
  with handle_signals(stop):
    for b in range(num_batches):
      chunk = queue[b * local_batch:(b + 1) * local_batch]
      valid = len(chunk)
      index = np.array([i for _, i in chunk] + [0] * (local_batch - valid), np.int32)
      labels = plan.labels[index].astype(np.int32)
      batch = parallel.to_global({"labels": labels, "index": index}, sharding)
      images = to_uint8(_local_rows(sampler(params, batch["labels"], batch["index"], root_key)),
                        mean, std)
      finished = np.zeros_like(done)
      for row, (k, i) in enumerate(chunk):
        buffers.setdefault(k, []).append((i, images[row]))
        start, stop_index = plan.shard_range(k)
        if len(buffers[k]) == stop_index - start:
          rows = buffers.pop(k)
          synthetic_format.write_shard(directory, k, np.stack([r[1] for r in rows]),
                                       plan.labels[start:stop_index],
                                       np.array([r[0] for r in rows], np.int64))
          finished[k] = 1
      finished = _allgather_max(finished)
      if finished.any():
        done = np.maximum(done, finished)
        write_manifest(bool(done.all()))
        count = int(sum(plan.entry(k)["count"] for k in np.flatnonzero(done)))
        progress.update(count, {"shards": float(done.sum())})
      requested = _allgather_max(np.array([int(stop(int(done.sum())))]))[0]
      if requested and not done.all():
        raise Preempted(f"sweep stopped on request after {int(done.sum())} of "
                        f"{plan.num_shards} shards; rerun the same command to resume")
  if not done.all():
    raise CheckpointError(f"sweep in {directory} ended with shards missing "
                          f"{np.flatnonzero(done == 0).tolist()[:10]}: rerun to finish them")
  return {**manifest, "shards": [plan.entry(k) for k in range(plan.num_shards)],
          "complete": True, "images_per_s": progress.rate(total)}
