"""Real + synthetic training data: one source over several, and a per-batch mixing order.

Three ways to mix (config `data.synthetic.mix`):

  count     the training set is the real train split followed by every synthetic set; a
            sampler (instance, class-balanced, ...) runs over the whole union.
  fraction  every global batch of B holds n_s = round(fraction * B) synthetic samples (slots
            [0, n_s)) and B - n_s real ones; each part has its own index order (the recipe's
            sampler over that part), fed by its own position counter, so a batch's content
            depends on (seed, step, slot) only.
  only      the training set is the synthetic sets alone (DiffuPT's pretraining stage).

Validation and test are always the real splits; only training data is mixed. The real part
may be a subset of the train split (`data.train_indices_file`, `train_subset`), e.g. the kept
samples of FairDiff's equal-scale balancing (recipes/equal_scale.py).
"""

from __future__ import annotations

import json
import os
from typing import Callable

import numpy as np

from jaxsynth.data.base import ImageSource, SubsetSource, group_ids, num_groups
from jaxsynth.data.pipeline import input_shape
from jaxsynth.errors import ConfigError, DataError

INDICES_KEY = "data.train_indices_file"


def read_indices(path: str, length: int) -> np.ndarray:
  """The int64 (K,) train indices in `path` (.npy of ints or .json list), each in [0, length)
  and distinct; DataError naming data.train_indices_file otherwise."""
  where = f"config key '{INDICES_KEY}' ({path})"
  fix = ("write the distinct indices into the train split as a 1-D .npy of integers or a .json "
         "list, or leave the key empty")
  try:
    if path.endswith(".json"):
      with open(path, encoding="utf-8") as f:
        values = np.asarray(json.load(f))
    elif path.endswith(".npy"):
      values = np.load(path, allow_pickle=False)
    else:
      raise DataError(f"{where} is neither .npy nor .json: {fix}")
  except (OSError, ValueError) as e:
    reason = "does not exist" if not os.path.exists(path) else f"cannot be read ({e})"
    raise DataError(f"{where} {reason}: {fix}") from None
  if values.ndim != 1 or values.size == 0 or not np.issubdtype(values.dtype, np.integer):
    raise DataError(f"{where} holds a {values.dtype} array of shape {values.shape}, not a "
                    f"non-empty list of integers: {fix}")
  values = values.astype(np.int64)
  bad = np.flatnonzero((values < 0) | (values >= length))
  if bad.size:
    raise DataError(f"{where} holds index {int(values[bad[0]])} but the train split has "
                    f"{length} samples (indices 0..{length - 1}): the file was made for other "
                    f"data; remake it for this train split, or {fix.split(', or ')[-1]}")
  if np.unique(values).size != values.size:
    raise DataError(f"{where} repeats an index: {fix}")
  return values


def train_subset(train: ImageSource, path: str) -> ImageSource:
  """`train` restricted to the indices of `path` (data.train_indices_file); itself for ""."""
  if not path:
    return train
  subset = SubsetSource(train, read_indices(path, len(train)))
  subset.name = f"{train.name} [{len(subset)} of {len(train)}: {INDICES_KEY}]"
  return subset


class ConcatSource(ImageSource):
  """The samples of `parts` one after another; `origin[i]` is the part sample i comes from."""

  def __init__(self, parts: list[ImageSource]):
    first = parts[0]
    labels = np.concatenate([p.labels for p in parts])
    has_groups = all(p.groups is not None for p in parts)
    groups = (np.concatenate([group_ids(p)[:, None] for p in parts]) if has_groups else None)
    super().__init__(labels, first.num_classes, first.image_shape, groups, first.class_names,
                     getattr(first, "group_names", ()))
    self.parts = list(parts)
    self.offsets = np.cumsum([0] + [len(p) for p in parts])
    self.origin = np.repeat(np.arange(len(parts)), [len(p) for p in parts])
    self.name = " + ".join(p.name for p in parts)

  def load_image(self, index: int) -> np.ndarray:
    part = int(self.origin[index])
    return self.parts[part].load_image(index - int(self.offsets[part]))


def check_synthetic(real: ImageSource, synthetic: ImageSource, data_cfg, path: str) -> None:
  """Raises DataError unless `synthetic` has `real`'s classes and, after resizing, its shape."""
  if synthetic.num_classes != real.num_classes:
    raise DataError(f"synthetic set {path} has {synthetic.num_classes} classes but the real "
                    f"data {real.name} has {real.num_classes}: use a sweep of a generator "
                    "trained on this data (data.synthetic.paths)")
  mine, theirs = input_shape(data_cfg, real), input_shape(data_cfg, synthetic)
  if mine != theirs:
    raise DataError(f"synthetic set {path} gives {theirs[0]}x{theirs[1]}x{theirs[2]} images but "
                    f"the real train split gives {mine[0]}x{mine[1]}x{mine[2]}: sample at the "
                    "real data's size and channels, or set data.image_size / data.channels")


def synthetic_slots(fraction: float, global_batch: int) -> int:
  """n_s: the synthetic slots of each global batch in `fraction` mode."""
  if not 0 < fraction < 1:
    raise ConfigError(f"config key 'data.synthetic.fraction' has bad value {fraction!r}: use a "
                      "fraction in (0, 1) of each batch")
  n = int(round(fraction * global_batch))
  if not 0 < n < global_batch:
    raise ConfigError(f"config key 'data.synthetic.fraction' ({fraction}) gives {n} of "
                      f"{global_batch} slots per batch: every batch needs at least one real and "
                      "one synthetic slot; change the fraction or train.batch_size")
  return n


class FractionOrder:
  """Position g -> index of a ConcatSource(real, synthetic...): slot < n_s of each batch is
  synthetic (drawn by `synthetic_order` at its own counter), the others real."""

  def __init__(self, real_order: Callable[[int], int], synthetic_order: Callable[[int], int],
               num_real: int, global_batch: int, synthetic_per_batch: int):
    self.real_order, self.synthetic_order = real_order, synthetic_order
    self.num_real, self.batch, self.n_s = int(num_real), int(global_batch), int(synthetic_per_batch)

  def __call__(self, position: int) -> int:
    step, slot = divmod(int(position), self.batch)
    if slot < self.n_s:
      return self.num_real + int(self.synthetic_order(step * self.n_s + slot))
    return int(self.real_order(step * (self.batch - self.n_s) + slot - self.n_s))


def counts(source: ImageSource) -> dict:
  """Per-class (and per-group) counts of each part of a ConcatSource, for logs and mixture.json."""
  parts = source.parts if isinstance(source, ConcatSource) else [source]
  out = []
  for part in parts:
    entry = {"source": part.name, "samples": len(part),
             "class_counts": part.class_counts().tolist()}
    if part.groups is not None:
      entry["group_counts"] = np.bincount(group_ids(part), minlength=num_groups(part)).tolist()
    out.append(entry)
  out = {"parts": out, "class_counts": source.class_counts().tolist()}
  if source.groups is not None:
    out["group_counts"] = np.bincount(group_ids(source), minlength=num_groups(source)).tolist()
  return out
