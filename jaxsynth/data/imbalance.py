"""Class-count tools: long-tailed subsets, stratified holdouts and class-count reports.

The long-tail profile is the exponential one of Cao et al. 2019 (LDAM, CIFAR-10/100-LT):
class c keeps n_c = n_max * ratio ** (-c / (C - 1)) samples, so class 0 is the head and
class C-1 the tail, and n_0 / n_(C-1) = ratio. Counts are floored as in the paper's code.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from absl import logging

from jaxsynth.errors import DataError

_WARNED: set = set()  # (ratio, counts) whose long-tail shortfall was logged


def imbalance_ratio(counts) -> float:
  """Largest class count over smallest (inf when a class is empty)."""
  return _max_over_min(np.asarray(counts, dtype=np.int64))


def _max_over_min(counts: np.ndarray) -> float:
  if counts.size == 0:
    raise ValueError("imbalance_ratio needs at least one class count")
  smallest = int(counts.min())
  return float("inf") if smallest == 0 else float(counts.max()) / smallest


def long_tail_counts(counts_per_class, imbalance_ratio: float) -> np.ndarray:
  """Per-class targets n_max * ratio ** (-c / (C - 1)), each capped by what the class has."""
  counts = np.asarray(counts_per_class, dtype=np.int64)
  if counts.ndim != 1 or counts.size == 0:
    raise ValueError(f"counts_per_class must be a non-empty 1-D array, got shape {counts.shape}")
  if not imbalance_ratio >= 1:
    raise ValueError(f"imbalance_ratio must be >= 1, got {imbalance_ratio}")
  num_classes = counts.size
  if num_classes == 1:
    return counts.copy()
  exponents = np.arange(num_classes) / (num_classes - 1)
  # The epsilon keeps exact ratios exact: 100 * 10 ** -1 is 10.000000000000002 or 9.999...
  targets = np.floor(counts.max() * float(imbalance_ratio) ** -exponents + 1e-6).astype(np.int64)
  targets = np.maximum(targets, 1)
  capped = np.minimum(targets, counts)
  short = np.flatnonzero(capped < targets)
  key = (float(imbalance_ratio), tuple(counts.tolist()))
  if short.size and key not in _WARNED:  # once per process: a run opens its train split often
    _WARNED.add(key)
    logging.warning(
        "long tail with ratio %g: classes %s have fewer samples than the profile asks "
        "(%s < %s) and keep all they have; the resulting max/min ratio is %.3g",
        imbalance_ratio, short.tolist(), counts[short].tolist(), targets[short].tolist(),
        _max_over_min(capped))
  return capped


def long_tail_indices(labels, target_counts, seed: int) -> np.ndarray:
  """Sorted indices of a random subset with exactly `target_counts[c]` samples of class c."""
  labels = np.asarray(labels, dtype=np.int64)
  targets = np.asarray(target_counts, dtype=np.int64)
  if labels.size and (labels.min() < 0 or labels.max() >= targets.size):
    raise ValueError(f"labels must lie in [0, {targets.size}) to match target_counts")
  rng = np.random.default_rng(seed)
  chosen = []
  for c, wanted in enumerate(targets.tolist()):
    members = np.flatnonzero(labels == c)
    if wanted > members.size:
      raise DataError(f"class {c} has {members.size} samples but {wanted} were asked for: "
                      f"lower its entry in data.class_counts to at most {members.size}")
    if wanted < 0:
      raise DataError(f"class {c} was asked for {wanted} samples: counts must be >= 0")
    chosen.append(rng.choice(members, size=wanted, replace=False))
  return np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, np.int64)


def stratified_holdout(labels, fractions: Sequence[float], seed: int) -> tuple[np.ndarray, ...]:
  """Sorted index arrays (rest, held_1, ..., held_k), each class split by `fractions`."""
  # Each class gives round(fraction * n) samples to each held-out part, at least one while it
  # has one to spare, and always keeps at least one in `rest`.
  labels = np.asarray(labels, dtype=np.int64)
  fractions = [float(f) for f in fractions]
  if any(not 0 <= f < 1 for f in fractions) or sum(fractions) >= 1:
    raise ValueError(f"fractions must lie in [0, 1) and sum to less than 1, got {fractions}")
  rng = np.random.default_rng(seed)
  parts: list[list[np.ndarray]] = [[] for _ in range(len(fractions) + 1)]
  for c in np.unique(labels):
    members = rng.permutation(np.flatnonzero(labels == c))
    sizes = _holdout_sizes(members.size, fractions)
    start = 0
    for k, size in enumerate(sizes):
      parts[k + 1].append(members[start:start + size])
      start += size
    parts[0].append(members[start:])
  return tuple(np.sort(np.concatenate(p)) if p else np.zeros(0, np.int64) for p in parts)


def _holdout_sizes(n: int, fractions: list[float]) -> list[int]:
  sizes = [int(round(f * n)) for f in fractions]
  spare = n - 1 - sum(sizes)
  for k, f in enumerate(fractions):  # every held-out part gets a sample while they last
    if f > 0 and sizes[k] == 0 and spare > 0:
      sizes[k], spare = 1, spare - 1
  while n > 0 and sum(sizes) > n - 1:  # keep one sample in the rest
    sizes[int(np.argmax(sizes))] -= 1
  return sizes


def class_count_report(labels, num_classes: int, class_names: Sequence[str] = ()) -> str:
  """A plain-text table of per-class count and fraction, with the max/min ratio."""
  counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes)
  names = list(class_names) or [str(c) for c in range(num_classes)]
  total = int(counts.sum())
  width = max([len("class")] + [len(f"{c} {n}") for c, n in enumerate(names)])
  lines = [f"{'class':<{width}}  {'count':>8}  {'fraction':>8}"]
  for c, count in enumerate(counts.tolist()):
    label = str(c) if names[c] == str(c) else f"{c} {names[c]}"
    fraction = count / total if total else 0.0
    lines.append(f"{label:<{width}}  {count:>8d}  {fraction:>8.3f}")
  lines.append(f"total {total} samples in {num_classes} classes; "
               f"max/min ratio {imbalance_ratio(counts):.3g}")
  return "\n".join(lines)
