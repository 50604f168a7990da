"""FairDiff's equal-scale data balancing (applied to classification): every group of a sensitive
attribute ends with N_target training samples — groups above it are subsampled (a fixed draw
from the seed), groups below it are filled with synthetic samples of that group, split over
classes in proportion to the group's own class counts (so (class, group) cells keep their
shape).
"""

from __future__ import annotations

import numpy as np

from jaxsynth.data import base
from jaxsynth.data.pipeline import stream_rng
from jaxsynth.errors import DataError
from jaxsynth.synthesis.sweep import largest_remainder

SUBSAMPLE_STREAM = 11   # host random stream of the subsample draw (see data/pipeline.py)


def group_ids(source, what: str = "the training data") -> np.ndarray:
  """The (N,) group id of each sample (column 0 of `groups`); DataError when there are none."""
  if source.groups is None:
    raise DataError(f"recipe.name=equal_scale needs groups, but {what} ({source.name}) has none:"
                    " use data with {split}_groups (e.g. HAM10000's acquisition site), or "
                    "another recipe")
  return base.group_ids(source)


def equal_scale_plan(labels, groups, num_classes: int, seed: int, target: int = 0) -> dict:
  """{"keep": real indices kept, "synthetic": (num_groups, num_classes) counts to generate,
  "target": N_target}; N_target = `target` or the largest group's size."""
  labels, groups = np.asarray(labels, np.int64), np.asarray(groups, np.int64)
  num_groups = int(groups.max()) + 1
  sizes = np.bincount(groups, minlength=num_groups)
  n_target = int(target) or int(sizes.max())
  rng = stream_rng(seed, SUBSAMPLE_STREAM, 0)
  keep, synthetic = [], np.zeros((num_groups, num_classes), np.int64)
  for g in range(num_groups):
    members = np.flatnonzero(groups == g)
    if members.size == 0:
      continue
    if members.size > n_target:
      members = np.sort(rng.choice(members, n_target, replace=False))
    keep.append(members)
    missing = n_target - members.size
    if missing > 0:
      counts = np.bincount(labels[members], minlength=num_classes)
      synthetic[g] = largest_remainder(missing, counts)
  return {"keep": np.sort(np.concatenate(keep)), "synthetic": synthetic, "target": n_target}
