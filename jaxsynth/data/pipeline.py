"""grain pipelines: deterministic training batches and evaluation batches that see every sample once.

Every sample drawn for training has a *global position* g = step * global_batch + slot. The
position alone fixes which record it is (through an index order, e.g. a fresh permutation per
epoch) and its augmentation randomness, so a batch is the same whatever the number of processes,
and a run resumed at step s reads exactly the batches an uninterrupted run reads from step s.
Process p of P reads slots [p * B/P, (p+1) * B/P) of each global batch of size B.
"""

from __future__ import annotations

import functools
from typing import Callable, Iterator

import grain
import numpy as np

from jaxsynth.data import augment
from jaxsynth.data.base import ImageSource

# Host-side random streams: every generator is seeded by (seed, stream, counter) with a distinct
# non-zero stream tag, so no two streams can share a seed (numpy ignores trailing zeros).
ORDER_STREAM = 1       # counter = epoch: the instance-balanced permutation
AUGMENT_STREAM = 2     # counter = global sample position: augmentation draws
SAMPLER_STREAM = 3     # counter = epoch: class-aware samplers (recipes/samplers.py)


def stream_rng(seed: int, stream: int, counter: int) -> np.random.Generator:
  """The numpy generator of `counter` (epoch or position) in random stream `stream`."""
  return np.random.default_rng([seed, stream, counter])


class EpochShuffle:
  """Instance-balanced order: a new permutation of all samples every epoch."""

  def __init__(self, num_samples: int, seed: int):
    self.num_samples, self.seed = num_samples, seed

  @functools.lru_cache(maxsize=4)
  def permutation(self, epoch: int) -> np.ndarray:
    """The sample order of `epoch`, from the generator seeded by (seed, epoch)."""
    return stream_rng(self.seed, ORDER_STREAM, epoch).permutation(self.num_samples)

  def __call__(self, position: int) -> int:
    epoch, offset = divmod(position, self.num_samples)
    return int(self.permutation(epoch)[offset])


def _local_to_global(local_position: int, global_batch: int, process_index: int,
                     process_count: int) -> int:
  local_batch = global_batch // process_count
  step, slot = divmod(local_position, local_batch)
  return step * global_batch + process_index * local_batch + slot


def train_dataset(source: ImageSource, data_cfg, *, global_batch: int, seed: int,
                  start_step: int, num_steps: int, process_index: int = 0, process_count: int = 1,
                  index_order: Callable[[int], int] | None = None) -> grain.IterDataset:
  """Batches for steps [start_step, num_steps): {"image": float32, "label": int32} per process."""
  if len(source) == 0:
    raise ValueError(f"training split of {source.name} is empty")
  order = index_order or EpochShuffle(len(source), seed)
  local_batch = global_batch // process_count
  norm = augment.normalisation(data_cfg, input_shape(data_cfg, source)[-1])

  def load(local_position: int) -> dict:
    g = _local_to_global(local_position, global_batch, process_index, process_count)
    record = source[order(g)]
    rng = stream_rng(seed, AUGMENT_STREAM, g)
    return {"image": augment.preprocess(record["image"], data_cfg, rng, norm),
            "label": np.int32(record["label"])}

  positions = grain.MapDataset.range(start_step * local_batch, num_steps * local_batch)
  batches = positions.map(load).batch(local_batch, drop_remainder=True)
  return batches.to_iter_dataset(grain.ReadOptions(num_threads=data_cfg.threads,
                                                   prefetch_buffer_size=data_cfg.prefetch))


def input_shape(data_cfg, source: ImageSource) -> tuple[int, int, int]:
  """The (H, W, C) a model sees after resizing and channel conversion."""
  h, w, c = source.image_shape
  size = data_cfg.image_size
  return (size, size, data_cfg.channels or c) if size else (h, w, data_cfg.channels or c)


def num_eval_batches(num_samples: int, global_batch: int) -> int:
  """Batches needed to see every sample once (the last one padded)."""
  return -(-num_samples // global_batch)


def eval_dataset(source: ImageSource, data_cfg, *, global_batch: int, process_index: int = 0,
                 process_count: int = 1) -> grain.IterDataset:
  """Every sample exactly once, in order, padded to whole batches; `mask` is 0 on padding."""
  n = len(source)
  if n == 0:
    raise ValueError(f"evaluation split of {source.name} is empty")
  local_batch = global_batch // process_count
  steps = num_eval_batches(n, global_batch)
  norm = augment.normalisation(data_cfg, input_shape(data_cfg, source)[-1])

  def load(local_position: int) -> dict:
    g = _local_to_global(local_position, global_batch, process_index, process_count)
    record = source[min(g, n - 1)]
    return {"image": augment.preprocess(record["image"], data_cfg, None, norm),
            "label": np.int32(record["label"]), "mask": np.float32(g < n),
            "index": np.int32(g)}

  batches = grain.MapDataset.range(steps * local_batch).map(load).batch(local_batch)
  return batches.to_iter_dataset(grain.ReadOptions(num_threads=data_cfg.threads,
                                                   prefetch_buffer_size=data_cfg.prefetch))
