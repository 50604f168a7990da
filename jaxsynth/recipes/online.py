"""IOIS (online classifier-guided synthesis) pieces: accuracy-adaptive budgets and the
synthetic pool across epochs.

Algorithm 1 of IOIS: every epoch, the current classifier's per-class accuracy on the *training*
data gives the budgets k = Softmax(1 - acc) * K (eq. 5, accuracy-adaptive sampling, AAS); the
generator then synthesises k_c images of class c guided by the current classifier (eq. 4), and
they are merged with the real set for the next epoch. The per-class accuracy must come from
training predictions only: the authors' code reads the test split here, which leaks test labels
into training; `budgets_from_training` takes training labels and predictions and nothing else.
"""

from __future__ import annotations

import numpy as np

from jaxsynth.errors import ConfigError
from jaxsynth.metrics.classification import per_class_accuracy
from jaxsynth.synthesis.sweep import largest_remainder

POOL_MODES = ("replace", "accumulate")


def aas_budgets(train_accuracy, total: int, adaptive: bool = True) -> np.ndarray:
  """Integer budgets k_c summing exactly to K = `total`: Softmax(1 - acc) * K (IOIS eq. 5), or
  uniform when not `adaptive` (IOIS "+OIS" alone)."""
  acc = np.asarray(train_accuracy, np.float64)
  if acc.ndim != 1 or acc.size == 0 or not np.all(np.isfinite(acc)):
    raise ValueError(f"per-class accuracy must be a finite vector, got {acc!r}")
  if int(total) < acc.size:
    raise ConfigError(f"config key 'recipe.budget' has bad value {total!r}: it is less than the "
                      f"{acc.size} classes, so even uniform budgets leave a class out; use at least "
                      f"{acc.size}")
  if not adaptive:
    return largest_remainder(int(total), np.ones_like(acc))
  logits = 1.0 - acc
  weights = np.exp(logits - logits.max())
  return largest_remainder(int(total), weights / weights.sum())


def budgets_from_training(train_labels, train_probs, num_classes: int, total: int,
                          adaptive: bool = True) -> tuple[np.ndarray, np.ndarray]:
  """(budgets, per-class accuracy) from the current classifier's predictions on the training
  split only (never val or test)."""
  preds = np.argmax(np.asarray(train_probs), axis=-1)
  acc = per_class_accuracy(np.asarray(train_labels), preds, num_classes)
  acc = np.nan_to_num(np.asarray(acc, np.float64), nan=1.0)  # an absent class needs nothing
  return aas_budgets(acc, total, adaptive), acc


def _check_pool_mode(mode: str) -> None:
  if mode not in POOL_MODES:
    raise ConfigError(f"config key 'recipe.pool' has bad value {mode!r}; use one of "
                      f"{', '.join(POOL_MODES)}")


def pool_sizes(budgets_per_epoch, mode: str) -> list[int]:
  """Synthetic samples trained on in each epoch: the newest set (`replace`) or all so far
  (`accumulate`)."""
  _check_pool_mode(mode)
  sizes = [int(np.sum(b)) for b in budgets_per_epoch]
  return sizes if mode == "replace" else np.cumsum(sizes).tolist()


def pool(sets: list, mode: str) -> list:
  """The synthetic sets the next epoch trains on, given every epoch's set so far."""
  _check_pool_mode(mode)
  return list(sets[-1:]) if mode == "replace" else list(sets)
