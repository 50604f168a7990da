"""Classification metrics in pure numpy, matching scikit-learn's definitions.

Conventions (shared by every function here):
- `labels` are integer class ids, shape (N,) (an (N, 1) column, as MedMNIST stores it, is
  accepted); `preds` likewise; `probs` are scores of shape (N, num_classes).
- Confusion matrices have true classes on rows and predicted classes on columns.
- A class absent from `labels` has no recall: `per_class_accuracy` reports it as 0.0 (never
  NaN) and `balanced_accuracy` and `auc` leave it out of their means, as scikit-learn does.
  `classification_metrics` logs a warning naming such classes.
- `auc` is NaN where it is undefined (fewer than two classes present in `labels`);
  `classification_metrics` stores that as `None` so that `metrics.json` stays strict JSON.
"""

from __future__ import annotations

import logging
import math

import numpy as np

log = logging.getLogger(__name__)

__all__ = [
    "accuracy", "auc", "balanced_accuracy", "classification_metrics", "confusion_matrix",
    "equity_scaled", "group_metrics", "harmonic_mean", "macro_f1", "mcc", "per_class_accuracy",
    "predict", "sensitivity", "specificity",
]


# ---------------------------------------------------------------------------- validation


def _as_class_ids(x, what: str, num_classes: int | None = None) -> np.ndarray:
  """Returns `x` as an int64 vector of class ids, or raises ValueError saying what is wrong."""
  a = np.asarray(x)
  if a.ndim == 2 and a.shape[1] == 1:
    a = a[:, 0]
  if a.ndim != 1:
    raise ValueError(f"{what} must be a vector of class ids of shape (N,), got shape {a.shape}")
  if a.shape[0] == 0:
    raise ValueError(f"{what} is empty: metrics need at least one sample")
  numeric = np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)
  if a.dtype == bool or not numeric:
    raise ValueError(f"{what} must hold integer class ids, got dtype {a.dtype}")
  if np.issubdtype(a.dtype, np.floating):
    if not np.all(np.isfinite(a)) or np.any(a != np.round(a)):
      raise ValueError(f"{what} must hold integer class ids, got non-integer values")
  a = a.astype(np.int64)
  if num_classes is not None:
    bad = (a < 0) | (a >= num_classes)
    if np.any(bad):
      raise ValueError(f"{what} must lie in [0, {num_classes}), got {int(a[bad][0])} "
                       f"(at index {int(np.flatnonzero(bad)[0])})")
  return a


def _check_num_classes(num_classes) -> int:
  """Returns `num_classes` as an int >= 2, or raises ValueError."""
  if isinstance(num_classes, bool) or int(num_classes) != num_classes or num_classes < 2:
    raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
  return int(num_classes)


def _check_pair(labels, preds, num_classes: int | None) -> tuple[np.ndarray, np.ndarray]:
  """Validates labels and predictions together (same length, ids in range)."""
  labels = _as_class_ids(labels, "labels", num_classes)
  preds = _as_class_ids(preds, "preds", num_classes)
  if labels.shape != preds.shape:
    raise ValueError(f"labels and preds differ in length: {labels.shape[0]} vs {preds.shape[0]}")
  return labels, preds


def _check_probs(probs, n: int, num_classes: int) -> np.ndarray:
  """Returns `probs` as float64 (N, num_classes), or raises ValueError."""
  p = np.asarray(probs)
  if p.ndim != 2 or p.shape != (n, num_classes):
    raise ValueError(f"probs must have shape (N, num_classes) = ({n}, {num_classes}), "
                     f"got {p.shape}")
  if not (np.issubdtype(p.dtype, np.floating) or np.issubdtype(p.dtype, np.integer)):
    raise ValueError(f"probs must be numeric, got dtype {p.dtype}")
  p = p.astype(np.float64)
  if not np.all(np.isfinite(p)):
    rows = np.flatnonzero(~np.all(np.isfinite(p), axis=1))
    raise ValueError(f"probs must be finite: {rows.size} row(s) hold NaN or Inf "
                     f"(first at index {int(rows[0])})")
  return p


def _check_positive_class(positive_class, num_classes: int) -> int:
  """Returns `positive_class` as an int in range, or raises ValueError."""
  if isinstance(positive_class, bool) or int(positive_class) != positive_class or not (
      0 <= positive_class < num_classes):
    raise ValueError(f"positive_class must be a class id in [0, {num_classes}), "
                     f"got {positive_class!r}")
  return int(positive_class)


# ------------------------------------------------------------------ label-based metrics


def confusion_matrix(labels, preds, num_classes: int) -> np.ndarray:
  """Counts (num_classes, num_classes) int64: row = true class, column = predicted class."""
  num_classes = _check_num_classes(num_classes)
  labels, preds = _check_pair(labels, preds, num_classes)
  flat = np.bincount(labels * num_classes + preds, minlength=num_classes * num_classes)
  return flat.reshape(num_classes, num_classes).astype(np.int64)


def _recalls(cm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Per-class recall (0.0 where a class has no true samples) and the mask of present classes."""
  support = cm.sum(axis=1)
  present = support > 0
  recall = np.zeros(cm.shape[0], dtype=np.float64)
  recall[present] = np.diag(cm)[present] / support[present]
  return recall, present


def per_class_accuracy(labels, preds, num_classes: int) -> np.ndarray:
  """Recall of each class, shape (num_classes,); 0.0 for a class absent from `labels`."""
  return _recalls(confusion_matrix(labels, preds, num_classes))[0]


def accuracy(labels, preds) -> float:
  """Fraction of samples whose prediction equals the label."""
  labels, preds = _check_pair(labels, preds, None)
  return float(np.mean(labels == preds))


def balanced_accuracy(labels, preds, num_classes: int) -> float:
  """Mean recall over the classes present in `labels` (sklearn's balanced_accuracy_score)."""
  recall, present = _recalls(confusion_matrix(labels, preds, num_classes))
  return float(np.mean(recall[present]))


def macro_f1(labels, preds, num_classes: int) -> float:
  """Unweighted mean F1 over all `num_classes` classes; a class with 2TP+FP+FN = 0 scores 0."""
  cm = confusion_matrix(labels, preds, num_classes)
  tp = np.diag(cm).astype(np.float64)
  denom = cm.sum(axis=0) + cm.sum(axis=1)  # (TP+FP) + (TP+FN) = 2TP + FP + FN
  f1 = np.zeros(num_classes, dtype=np.float64)
  nz = denom > 0
  f1[nz] = 2.0 * tp[nz] / denom[nz]
  return float(np.mean(f1))


def mcc(labels, preds, num_classes: int) -> float:
  """Multi-class Matthews correlation (Gorodkin's R_K); 0.0 when either marginal is constant."""
  cm = confusion_matrix(labels, preds, num_classes).astype(np.float64)
  t_sum = cm.sum(axis=1)
  p_sum = cm.sum(axis=0)
  n = cm.sum()
  cov_ytyp = np.trace(cm) * n - t_sum @ p_sum
  cov_ypyp = n * n - p_sum @ p_sum
  cov_ytyt = n * n - t_sum @ t_sum
  if cov_ypyp * cov_ytyt == 0:
    return 0.0
  return float(np.clip(cov_ytyp / math.sqrt(cov_ytyt * cov_ypyp), -1.0, 1.0))


def _binary_counts(labels, preds, positive_class: int) -> tuple[int, int, int, int]:
  """(TP, FN, TN, FP) treating `positive_class` as positive and every other class as negative."""
  labels, preds = _check_pair(labels, preds, None)
  pos, hit = labels == positive_class, preds == positive_class
  return (int(np.sum(pos & hit)), int(np.sum(pos & ~hit)), int(np.sum(~pos & ~hit)),
          int(np.sum(~pos & hit)))


def sensitivity(labels, preds, positive_class: int = 1) -> float:
  """Recall of `positive_class`: TP / (TP + FN); 0.0 when `labels` has no positives."""
  tp, fn, _, _ = _binary_counts(labels, preds, positive_class)
  return tp / (tp + fn) if tp + fn else 0.0


def specificity(labels, preds, positive_class: int = 1) -> float:
  """Recall of the negatives (all other classes): TN / (TN + FP); 0.0 when there are none."""
  _, _, tn, fp = _binary_counts(labels, preds, positive_class)
  return tn / (tn + fp) if tn + fp else 0.0


def harmonic_mean(labels, preds, positive_class: int = 1) -> float:
  """Harmonic mean of sensitivity and specificity; 0.0 when both are 0."""
  sens = sensitivity(labels, preds, positive_class)
  spec = specificity(labels, preds, positive_class)
  return 2.0 * sens * spec / (sens + spec) if sens + spec > 0 else 0.0


# ------------------------------------------------------------------ score-based metrics


def _average_ranks(x: np.ndarray) -> np.ndarray:
  """1-based ranks of `x`, tied values sharing the mean of their ranks."""
  order = np.argsort(x, kind="mergesort")
  xs = x[order]
  starts = np.flatnonzero(np.r_[True, xs[1:] != xs[:-1]])
  ends = np.r_[starts[1:], xs.size]  # exclusive
  group_rank = (starts + 1 + ends) / 2.0  # mean of ranks starts+1 .. ends
  ranks = np.empty(x.size, dtype=np.float64)
  ranks[order] = np.repeat(group_rank, ends - starts)
  return ranks


def _binary_auc(is_pos: np.ndarray, score: np.ndarray) -> float:
  """ROC AUC via the Mann-Whitney U statistic (ties count 1/2); NaN if one side is empty."""
  n_pos = int(is_pos.sum())
  n_neg = is_pos.size - n_pos
  if n_pos == 0 or n_neg == 0:
    return float("nan")
  ranks = _average_ranks(score)
  u = ranks[is_pos].sum() - n_pos * (n_pos + 1) / 2.0
  return float(u / (n_pos * n_neg))


def auc(labels, probs, positive_class: int = 1) -> float:
  """ROC AUC: binary = AUC of p(positive_class); multi-class = macro one-vs-rest; NaN if undefined.

  With two classes this equals `sklearn.metrics.roc_auc_score(labels == positive_class,
  probs[:, positive_class])`. With more, each class present in `labels` is scored one-vs-rest on
  its own column and the AUCs are averaged (classes absent from `labels` are skipped, where
  scikit-learn would raise). It is NaN when `labels` holds fewer than two distinct classes.
  """
  p = np.asarray(probs)
  if p.ndim != 2:
    raise ValueError(f"probs must have shape (N, num_classes), got {p.shape}")
  num_classes = _check_num_classes(p.shape[1])
  labels = _as_class_ids(labels, "labels", num_classes)
  p = _check_probs(p, labels.shape[0], num_classes)
  if num_classes == 2:
    positive_class = _check_positive_class(positive_class, 2)
    return _binary_auc(labels == positive_class, p[:, positive_class])
  present = np.flatnonzero(np.bincount(labels, minlength=num_classes))
  if present.size < 2:
    return float("nan")
  return float(np.mean([_binary_auc(labels == k, p[:, k]) for k in present]))


def predict(probs, positive_class: int = 1, threshold: float | None = None) -> np.ndarray:
  """Class ids from scores: argmax (first max wins), or for 2 classes p(positive) >= threshold."""
  p = np.asarray(probs)
  if p.ndim != 2 or p.shape[0] == 0:
    raise ValueError(f"probs must have shape (N, num_classes) with N >= 1, got {p.shape}")
  num_classes = _check_num_classes(p.shape[1])
  p = _check_probs(p, p.shape[0], num_classes)
  if threshold is None:
    return np.argmax(p, axis=1).astype(np.int64)
  if num_classes != 2:
    raise ValueError(f"threshold applies to two classes only, got num_classes={num_classes}")
  threshold = float(threshold)
  if not math.isfinite(threshold):
    raise ValueError(f"threshold must be finite, got {threshold}")
  positive_class = _check_positive_class(positive_class, 2)
  hit = p[:, positive_class] >= threshold
  return np.where(hit, positive_class, 1 - positive_class).astype(np.int64)


# ------------------------------------------------------------------------------ summary


def classification_metrics(labels, probs, num_classes: int, positive_class: int = 1,
                           threshold: float | None = None) -> dict:
  """The GUIDE §7 metrics dict of one split, in plain Python types (see the module docstring).

  Keys: accuracy, balanced_accuracy, macro_f1, mcc, auc (None where undefined),
  per_class_accuracy (list), confusion_matrix (list of lists), num_samples, and for two
  classes also sensitivity, specificity and harmonic_mean of `positive_class`. Predictions are
  `predict(probs, positive_class, threshold)`.
  """
  num_classes = _check_num_classes(num_classes)
  labels = _as_class_ids(labels, "labels", num_classes)
  p = _check_probs(probs, labels.shape[0], num_classes)
  if num_classes == 2:
    positive_class = _check_positive_class(positive_class, 2)
  preds = predict(p, positive_class, threshold)

  cm = confusion_matrix(labels, preds, num_classes)
  recall, present = _recalls(cm)
  if not np.all(present):
    log.warning("classes %s are absent from the labels (%d samples): their per_class_accuracy "
                "is reported as 0.0 and balanced_accuracy/auc leave them out",
                np.flatnonzero(~present).tolist(), labels.shape[0])
  roc_auc = auc(labels, p, positive_class if num_classes == 2 else 1)
  out = {
      "accuracy": accuracy(labels, preds),
      "balanced_accuracy": float(np.mean(recall[present])),
      "macro_f1": macro_f1(labels, preds, num_classes),
      "mcc": mcc(labels, preds, num_classes),
      "auc": None if math.isnan(roc_auc) else roc_auc,
      "per_class_accuracy": [float(r) for r in recall],
      "confusion_matrix": [[int(c) for c in row] for row in cm],
      "num_samples": int(labels.shape[0]),
  }
  if num_classes == 2:
    out["sensitivity"] = sensitivity(labels, preds, positive_class)
    out["specificity"] = specificity(labels, preds, positive_class)
    out["harmonic_mean"] = harmonic_mean(labels, preds, positive_class)
  return out


# ------------------------------------------------------------------ per-group metrics


def _check_groups(groups, n: int) -> np.ndarray:
  """Returns `groups` as an int64 vector of ids >= 0 of length `n`, or raises ValueError."""
  g = np.asarray(groups)
  if g.ndim == 2 and g.shape[1] == 1:
    g = g[:, 0]
  if g.ndim != 1:
    raise ValueError(f"groups must be a vector of group ids of shape (N,), got shape {g.shape}")
  if g.dtype == bool or not np.issubdtype(g.dtype, np.integer):
    raise ValueError(f"groups must hold integer group ids, got dtype {g.dtype}")
  if g.shape[0] != n:
    raise ValueError(f"labels and groups differ in length: {n} vs {g.shape[0]}")
  if np.any(g < 0):
    bad = int(np.flatnonzero(g < 0)[0])
    raise ValueError(f"groups must be >= 0, got {int(g[bad])} (at index {bad})")
  return g.astype(np.int64)


def equity_scaled(overall: float | None, per_group) -> float | None:
  """ES-M = M_overall / (1 + sum_g |M_g - M_overall|) over defined M_g; None if M_overall is."""
  if overall is None:
    return None
  gap = sum(abs(m - overall) for m in per_group if m is not None)
  return float(overall / (1.0 + gap))


def _split_metrics(labels: np.ndarray, p: np.ndarray, preds: np.ndarray, num_classes: int,
                   positive_class: int) -> dict:
  """accuracy, auc and (two classes) sensitivity/specificity of one subset; None if undefined."""
  roc_auc = auc(labels, p, positive_class if num_classes == 2 else 1)
  out = {"accuracy": accuracy(labels, preds), "auc": None if math.isnan(roc_auc) else roc_auc}
  if num_classes == 2:
    n_pos = int(np.sum(labels == positive_class))
    out["sensitivity"] = sensitivity(labels, preds, positive_class) if n_pos else None
    out["specificity"] = (specificity(labels, preds, positive_class)
                          if n_pos < labels.shape[0] else None)
  return out


def group_metrics(labels, probs, groups, num_classes: int, positive_class: int = 1,
                  threshold: float | None = None, group_names=()) -> dict:
  """Per-group accuracy/auc(/sensitivity/specificity) and their equity-scaled (ES) figures.

  Predictions are `predict(probs, positive_class, threshold)`, as in `classification_metrics`,
  and each group's auc is `auc` on its subset (macro one-vs-rest for more than two classes).
  A figure undefined for a group (auc with one class present, sensitivity without positives,
  specificity without negatives) is None. For every metric M the equity-scaled value is

    ES-M = M_overall / (1 + sum_g |M_g - M_overall|),

  the ES-Dice of FairSeg / FairDiff (Tian et al., "FairSeg: A Large-Scale Medical Image
  Segmentation Dataset for Fairness Learning", ICLR 2024) applied to M: M_overall is M on all
  samples and the sum runs over the groups whose M_g is defined; ES-M is None if M_overall is.

  Returns {"per_group": {name: {"n", "accuracy", "auc"[, "sensitivity", "specificity"]}},
  "es_accuracy", "es_auc"[, "es_sensitivity", "es_specificity"]}, plain Python types. A group's
  name is `group_names[g]` if names are given, else `str(g)`; only groups present are listed,
  sorted by id.
  """
  num_classes = _check_num_classes(num_classes)
  labels = _as_class_ids(labels, "labels", num_classes)
  p = _check_probs(probs, labels.shape[0], num_classes)
  groups = _check_groups(groups, labels.shape[0])
  if num_classes == 2:
    positive_class = _check_positive_class(positive_class, 2)
  preds = predict(p, positive_class, threshold)
  ids = np.unique(groups)
  names = [str(n) for n in group_names]
  if names:
    if int(ids[-1]) >= len(names):
      raise ValueError(f"group_names has {len(names)} names but groups holds id {int(ids[-1])}: "
                       "give one name per group id")
    if len(set(names)) != len(names):
      raise ValueError(f"group_names must be distinct, got {names}")

  overall = _split_metrics(labels, p, preds, num_classes, positive_class)
  per_group = {}
  for g in ids:
    m = groups == g
    row = {"n": int(m.sum())}
    row.update(_split_metrics(labels[m], p[m], preds[m], num_classes, positive_class))
    per_group[names[g] if names else str(int(g))] = row
  out = {"per_group": per_group}
  for key, value in overall.items():
    out[f"es_{key}"] = equity_scaled(value, [row[key] for row in per_group.values()])
  return out
