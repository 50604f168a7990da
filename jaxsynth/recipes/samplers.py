"""Class-aware samplers as index orders for `pipeline.train_dataset(..., index_order=...)`.

An index order maps a global sample position g to a source index. The class-aware orders cut
the positions into training epochs of `positions_per_epoch` (steps per epoch x global batch);
epoch e draws all its positions at once from the generator seeded by (seed, stream, e): first a
class per position from the epoch's class probabilities p_c, then a sample of that class. So an
index depends on (seed, g) only, whatever the process count or resume point, and a draw costs
O(1) after one O(positions + samples) pass per epoch (cached).

Within a class, samples are taken without replacement, cycling through fresh permutations of
the class (a class drawn k times with n_c samples sees each sample floor or ceil of k / n_c
times); the marginal is uniform over the class, as in "pick a class, then a sample of it".

Samplers (Kang et al. 2020, eq. 1: p_c = n_c^q / sum_k n_k^q): `instance` (q = 1, a new
permutation per epoch), `class_balanced` (q = 0), `sqrt` (q = 1/2), `weighted` (any q), and
`progressive` (eq. 2: instance-balanced to class-balanced over the training epochs).
"""

from __future__ import annotations

import functools
from typing import Callable

import numpy as np

from jaxsynth.data import pipeline
from jaxsynth.data.pipeline import EpochShuffle
from jaxsynth.errors import ConfigError

#: Recipe name -> sampler; recipes not listed use the instance-balanced order.
SAMPLERS = {
    "class_balanced_sampler": "class_balanced",
    "sqrt_sampler": "sqrt",
    "progressive_sampler": "progressive",
    "weighted_sampler": "weighted",
    "weighted_ce_sampler": "weighted",  # DiffuPT: the weighted sampler together with weighted CE
}


def class_probabilities(class_counts, q: float) -> np.ndarray:
  """p_c = n_c^q / sum_k n_k^q over the classes present (Kang et al. 2020, eq. 1)."""
  counts = np.asarray(class_counts, dtype=np.float64)
  present = counts > 0
  if not np.any(present):
    raise ConfigError("a class-aware sampler needs at least one training sample; the training "
                      "split is empty")
  raw = np.where(present, np.power(np.where(present, counts, 1.0), q), 0.0)
  return raw / raw.sum()


def progressive_probabilities(class_counts, epoch: int, total_epochs: float) -> np.ndarray:
  """p_c(t) = (1 - t/T) p_c^instance + (t/T) p_c^balanced, t = epoch (Kang et al. 2020, eq. 2)."""
  frac = min(max(epoch / total_epochs, 0.0), 1.0)
  return ((1.0 - frac) * class_probabilities(class_counts, 1.0)
          + frac * class_probabilities(class_counts, 0.0))


class ClassAwareOrder:
  """Position g -> source index: a class drawn from the epoch's p_c, then a sample of it."""

  def __init__(self, labels, num_classes: int, seed: int, positions_per_epoch: int,
               probabilities: Callable[[int], np.ndarray]):
    labels = np.asarray(labels, dtype=np.int64)
    if positions_per_epoch < 1:
      raise ValueError(f"positions_per_epoch must be positive, got {positions_per_epoch}")
    self.num_classes, self.seed = int(num_classes), int(seed)
    self.positions_per_epoch = int(positions_per_epoch)
    self.members = [np.flatnonzero(labels == c) for c in range(self.num_classes)]
    self.class_counts = np.array([len(m) for m in self.members], dtype=np.int64)
    self._probabilities = probabilities

  def class_probabilities(self, epoch: int) -> np.ndarray:
    """The class probabilities p_c that epoch `epoch` draws from."""
    return self._probabilities(epoch)

  @functools.lru_cache(maxsize=4)
  def indices(self, epoch: int) -> np.ndarray:
    """Source indices of every position of `epoch`, from the generator seeded by (seed, epoch)."""
    rng = pipeline.stream_rng(self.seed, pipeline.SAMPLER_STREAM, epoch)
    classes = rng.choice(self.num_classes, size=self.positions_per_epoch,
                         p=self.class_probabilities(epoch))
    out = np.empty(self.positions_per_epoch, dtype=np.int64)
    slots = np.argsort(classes, kind="stable")  # positions grouped by class
    start = 0
    for members, k in zip(self.members, np.bincount(classes, minlength=self.num_classes)):
      if k:
        cycles = -(-k // len(members))
        out[slots[start:start + k]] = np.concatenate(
            [rng.permutation(members) for _ in range(cycles)])[:k]
      start += k
    return out

  def __call__(self, position: int) -> int:
    epoch, offset = divmod(position, self.positions_per_epoch)
    return int(self.indices(epoch)[offset])


def instance_order(labels, seed: int) -> EpochShuffle:
  """Instance-balanced: every sample once per epoch, a new permutation each epoch."""
  return EpochShuffle(len(labels), seed)


def weighted_order(labels, num_classes: int, seed: int, positions_per_epoch: int,
                   q: float) -> ClassAwareOrder:
  """Class c drawn with probability proportional to n_c^q, then a sample of it."""
  probs = class_probabilities(np.bincount(np.asarray(labels), minlength=num_classes), q)
  return ClassAwareOrder(labels, num_classes, seed, positions_per_epoch, lambda epoch: probs)


def class_balanced_order(labels, num_classes: int, seed: int,
                         positions_per_epoch: int) -> ClassAwareOrder:
  """A class drawn uniformly (among the classes present), then a sample of it."""
  return weighted_order(labels, num_classes, seed, positions_per_epoch, 0.0)


def sqrt_order(labels, num_classes: int, seed: int, positions_per_epoch: int) -> ClassAwareOrder:
  """Class c drawn with probability proportional to sqrt(n_c), then a sample of it."""
  return weighted_order(labels, num_classes, seed, positions_per_epoch, 0.5)


def progressive_order(labels, num_classes: int, seed: int, positions_per_epoch: int,
                      total_epochs: float) -> ClassAwareOrder:
  """Progressively balanced: instance-balanced at epoch 0, moving to class-balanced by epoch T."""
  if not total_epochs > 0:
    raise ValueError(f"total_epochs must be positive, got {total_epochs}")
  counts = np.bincount(np.asarray(labels), minlength=num_classes)
  return ClassAwareOrder(labels, num_classes, seed, positions_per_epoch,
                         lambda epoch: progressive_probabilities(counts, epoch, total_epochs))


def make_index_order(config, labels, num_classes: int, steps_per_epoch: int,
                     total_steps: int) -> Callable[[int], int]:
  """The training index order of `config.recipe.name` (instance-balanced unless a sampler)."""
  kind = SAMPLERS.get(config.recipe.name, "instance")
  if kind == "instance":
    return instance_order(labels, config.seed)
  positions = steps_per_epoch * config.train.batch_size
  if kind == "class_balanced":
    return class_balanced_order(labels, num_classes, config.seed, positions)
  if kind == "sqrt":
    return sqrt_order(labels, num_classes, config.seed, positions)
  if kind == "progressive":
    return progressive_order(labels, num_classes, config.seed, positions,
                             total_steps / steps_per_epoch)
  q = float(config.recipe.sampler_q)
  if not np.isfinite(q):
    raise ConfigError(f"config key 'recipe.sampler_q' has bad value {q!r}: use a finite number "
                      "(0 = class-balanced, 0.5 = square-root, 1 = instance frequencies)")
  return weighted_order(labels, num_classes, config.seed, positions, q)
