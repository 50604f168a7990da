"""Evaluation extras: operating thresholds, bootstrap intervals, and the readable report files.

- `select_threshold` picks a binary operating point p(positive) >= t on one split (val) by
  Youden's J or by the harmonic mean of sensitivity and specificity; the caller applies the same
  t to every split.
- `bootstrap_intervals` gives percentile 95% intervals of the scalar metrics by resampling the
  samples of a split with replacement (seeded; the threshold stays fixed, it is not re-chosen).
- `write_report` writes `metrics.md` (tables) and `evaluation.png` (confusion matrices and
  per-class accuracy, drawn with PIL: matplotlib is not a dependency) atomically.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import os

import numpy as np

from jaxsynth import files
from jaxsynth.errors import ConfigError
from jaxsynth.metrics import classification

log = logging.getLogger(__name__)

THRESHOLD_METHODS = ("argmax", "youden", "max_harmonic_mean")
#: Scalar metrics of every task, and those that exist for two classes only.
SCALAR_METRICS = ("accuracy", "balanced_accuracy", "macro_f1", "mcc", "auc")
BINARY_METRICS = ("sensitivity", "specificity", "harmonic_mean")
MARKDOWN_FILE = "metrics.md"
PNG_FILE = "evaluation.png"


def check_select_metric(name: str, num_classes: int) -> None:
  """Raises ConfigError unless `name` is a scalar validation metric of this task."""
  known = SCALAR_METRICS + (BINARY_METRICS if num_classes == 2 else ())
  if name not in known:
    extra = (f" ({name} needs two classes, the data has {num_classes})"
             if name in BINARY_METRICS else "")
    raise ConfigError(f"config key 'train.select_metric' has bad value {name!r}{extra}; use one "
                      f"of {', '.join(known)}")


# ------------------------------------------------------------------------ thresholds


def operating_points(labels, probs, positive_class: int = 1):
  """(thresholds, sensitivity, specificity) of every distinct split of p(positive), descending.

  Threshold k predicts positive iff p >= thresholds[k]; it lies halfway between two adjacent
  distinct scores (the lowest is the lowest score, i.e. everything positive), so the split on
  these samples is the same as at the score itself but less brittle on another split.
  """
  labels = classification._as_class_ids(labels, "labels", 2)
  p = classification._check_probs(probs, labels.shape[0], 2)
  positive_class = classification._check_positive_class(positive_class, 2)
  score = p[:, positive_class]
  is_pos = labels == positive_class
  n_pos, n_neg = int(is_pos.sum()), int((~is_pos).sum())
  order = np.argsort(-score, kind="mergesort")
  s, y = score[order], is_pos[order]
  tp, fp = np.cumsum(y), np.cumsum(~y)
  last = np.r_[s[1:] != s[:-1], True]  # last sample of each group of equal scores
  tp, fp, at = tp[last], fp[last], s[last]
  below = np.r_[at[1:], -np.inf]  # next lower distinct score
  mid = (at + below) / 2.0
  # The midpoint keeps the split only where it lies strictly between the two scores.
  thresholds = np.where(np.isfinite(mid) & (mid > below) & (mid <= at), mid, at)
  sens = tp / n_pos if n_pos else np.zeros_like(at)
  spec = 1.0 - fp / n_neg if n_neg else np.zeros_like(at)
  return thresholds, sens, spec


def select_threshold(labels, probs, method: str, positive_class: int = 1) -> float | None:
  """Threshold on p(positive) maximising Youden's J or the sens/spec harmonic mean; None = argmax.

  Youden: J = sensitivity + specificity - 1 (Youden 1950). max_harmonic_mean: 2 sens spec /
  (sens + spec), DiffuPT's selection metric. Ties go to the threshold nearest 0.5 (the argmax
  rule). None when `method` is argmax, or when the split lacks positives or negatives.
  """
  if method not in THRESHOLD_METHODS:
    raise ConfigError(f"config key 'evaluate.threshold' has unknown value {method!r}; use one "
                      f"of {', '.join(THRESHOLD_METHODS)}")
  if method == "argmax":
    return None
  labels = classification._as_class_ids(labels, "labels", 2)
  pos = labels == classification._check_positive_class(positive_class, 2)
  if pos.all() or not pos.any():
    log.warning("evaluate.threshold=%s needs both classes in the validation split; using "
                "argmax", method)
    return None
  thresholds, sens, spec = operating_points(labels, probs, positive_class)
  if method == "youden":
    score = sens + spec - 1.0
  else:
    total = sens + spec
    score = np.where(total > 0, 2.0 * sens * spec / np.where(total > 0, total, 1.0), 0.0)
  best = np.flatnonzero(score >= score.max() - 1e-12)
  return float(thresholds[best[np.argmin(np.abs(thresholds[best] - 0.5))]])


# ------------------------------------------------------------------------- bootstrap


@contextlib.contextmanager
def _quiet(logger: logging.Logger):
  """Silences `logger` (resamples often miss a class; one warning per resample is noise)."""
  previous = logger.disabled
  logger.disabled = True
  try:
    yield
  finally:
    logger.disabled = previous


def bootstrap_intervals(labels, probs, num_classes: int, resamples: int, seed: int,
                        positive_class: int = 1, threshold: float | None = None) -> dict:
  """Percentile 95% intervals {metric: [lo, hi]} of the scalar metrics over seeded resamples.

  Each resample draws N samples with replacement (numpy Generator seeded by `seed`) and
  recomputes `classification_metrics` with the same threshold. Resamples where a metric is
  undefined (AUC with one class) are left out of its interval; it is None if all are.
  """
  labels = np.asarray(labels)
  probs = np.asarray(probs)
  if int(resamples) < 1:
    raise ValueError(f"resamples must be >= 1, got {resamples}")
  names = SCALAR_METRICS + (BINARY_METRICS if num_classes == 2 else ())
  rng = np.random.default_rng(int(seed))
  draws = rng.integers(0, labels.shape[0], size=(int(resamples), labels.shape[0]))
  values = {name: [] for name in names}
  with _quiet(classification.log):
    for idx in draws:
      m = classification.classification_metrics(labels[idx], probs[idx], num_classes,
                                                positive_class, threshold)
      for name in names:
        if m[name] is not None:
          values[name].append(m[name])
  out = {}
  for name in names:
    v = np.asarray(values[name], dtype=np.float64)
    out[name] = (None if v.size == 0 else
                 [float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))])
  return out


# --------------------------------------------------------------------------- reports


def _fmt(value, digits: int = 4) -> str:
  if value is None or (isinstance(value, float) and math.isnan(value)):
    return "n/a"
  return f"{value:.{digits}f}"


def _splits(results: dict) -> list[str]:
  return [k for k, v in results.items() if isinstance(v, dict) and "confusion_matrix" in v]


def markdown(results: dict, class_names=()) -> str:
  """The metrics dict as readable Markdown tables: scalars (with 95% CIs), per class, confusions."""
  splits = _splits(results)
  lines = ["# Evaluation", ""]
  checkpoint = results.get("checkpoint")
  if checkpoint:
    lines.append(f"Checkpoint: {checkpoint.get('which')} (step {checkpoint.get('step')}).")
  settings = results.get("evaluation", {})
  method = settings.get("threshold_method", "argmax")
  for split in splits:
    t = results[split].get("threshold")
    rule = "argmax" if t is None else f"p(positive) >= {t:.4f} ({method}, chosen on val)"
    lines.append(f"Decision rule on {split}: {rule}.")
  if settings.get("bootstrap"):
    lines.append(f"Intervals: percentile 95% over {settings['bootstrap']} bootstrap resamples "
                 f"(seed {settings.get('seed')}).")
  lines += ["", "| metric | " + " | ".join(splits) + " |",
            "|---|" + "---|" * len(splits)]
  names = [n for n in SCALAR_METRICS + BINARY_METRICS
           if any(n in results[s] for s in splits)]
  for name in names:
    cells = []
    for split in splits:
      cell = _fmt(results[split].get(name))
      ci = results[split].get("ci95", {}).get(name)
      if ci:
        cell += f" [{_fmt(ci[0], 3)}, {_fmt(ci[1], 3)}]"
      cells.append(cell)
    lines.append(f"| {name} | " + " | ".join(cells) + " |")
  lines.append("| samples | " + " | ".join(str(results[s].get("num_samples", "")) for s in splits)
               + " |")
  num_classes = len(results[splits[0]]["per_class_accuracy"]) if splits else 0
  names_of = _class_names(class_names, num_classes)
  lines += ["", "## Per-class accuracy (recall)", "",
            "| class | " + " | ".join(splits) + " |", "|---|" + "---|" * len(splits)]
  for c in range(num_classes):
    lines.append(f"| {names_of[c]} | " + " | ".join(
        _fmt(results[s]["per_class_accuracy"][c]) for s in splits) + " |")
  for split in splits:
    cm = results[split]["confusion_matrix"]
    lines += ["", f"## Confusion matrix: {split} (rows true, columns predicted)", "",
              "| true \\ pred | " + " | ".join(names_of) + " |",
              "|---|" + "---|" * num_classes]
    for c, row in enumerate(cm):
      lines.append(f"| {names_of[c]} | " + " | ".join(str(x) for x in row) + " |")
  return "\n".join(lines) + "\n"


def _class_names(class_names, num_classes: int) -> list[str]:
  names = [str(n) for n in class_names][:num_classes]
  return names + [str(c) for c in range(len(names), num_classes)]


def _blend(a, b, t: float) -> tuple[int, int, int]:
  return tuple(int(round(x + (y - x) * t)) for x, y in zip(a, b))


def render_png(results: dict, class_names=()) -> bytes:
  """PNG bytes: per split, the row-normalised confusion matrix and a per-class accuracy bar chart."""
  from PIL import Image, ImageDraw, ImageFont

  splits = _splits(results)
  if not splits:
    raise ValueError("results hold no split with a confusion matrix")
  num_classes = len(results[splits[0]]["per_class_accuracy"])
  names = _class_names(class_names, num_classes)
  font = ImageFont.load_default()
  cell = int(min(40, max(8, 400 // num_classes)))
  label_w = 90
  grid = cell * num_classes
  bar_w = 200
  panel_w = label_w + grid + 40 + label_w + bar_w + 50
  panel_h = 40 + grid + 30
  image = Image.new("RGB", (panel_w, panel_h * len(splits)), "white")
  draw = ImageDraw.Draw(image)
  white, blue, black = (255, 255, 255), (33, 84, 160), (0, 0, 0)
  for i, split in enumerate(splits):
    top = i * panel_h
    r = results[split]
    cm = np.asarray(r["confusion_matrix"], dtype=np.float64)
    rows = cm.sum(axis=1, keepdims=True)
    frac = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    t = r.get("threshold")
    title = (f"{split}: n={r.get('num_samples', int(cm.sum()))}  "
             f"balanced acc {_fmt(r.get('balanced_accuracy'), 3)}  "
             f"macro-F1 {_fmt(r.get('macro_f1'), 3)}  AUC {_fmt(r.get('auc'), 3)}"
             + ("" if t is None else f"  threshold {t:.3f}"))
    draw.text((8, top + 6), title, fill=black, font=font)
    draw.text((label_w, top + 22), "confusion (rows true, cols predicted)", fill=black, font=font)
    y0 = top + 38
    for a in range(num_classes):
      draw.text((8, y0 + a * cell + cell // 2 - 5), names[a][:14], fill=black, font=font)
      for b in range(num_classes):
        x, y = label_w + b * cell, y0 + a * cell
        color = _blend(white, blue, float(frac[a, b]))
        draw.rectangle([x, y, x + cell - 1, y + cell - 1], fill=color, outline=(200, 200, 200))
        if cell >= 24:
          draw.text((x + 3, y + cell // 2 - 5), str(int(cm[a, b])),
                    fill=white if frac[a, b] > 0.5 else black, font=font)
    bx = label_w + grid + 40
    draw.text((bx + label_w, top + 22), "per-class accuracy", fill=black, font=font)
    for a, acc in enumerate(r["per_class_accuracy"]):
      y = y0 + a * cell
      draw.text((bx, y + cell // 2 - 5), names[a][:14], fill=black, font=font)
      draw.rectangle([bx + label_w, y + 2, bx + label_w + bar_w, y + cell - 3],
                     outline=(200, 200, 200))
      draw.rectangle([bx + label_w, y + 2, bx + label_w + int(round(bar_w * acc)), y + cell - 3],
                     fill=blue)
      if cell >= 14:
        draw.text((bx + label_w + bar_w + 3, y + cell // 2 - 5), f"{acc:.2f}", fill=black,
                  font=font)
  buffer = io.BytesIO()
  image.save(buffer, format="PNG")
  return buffer.getvalue()


def write_report(out_dir: str, results: dict, class_names=()) -> None:
  """Atomically writes metrics.md and evaluation.png next to metrics.json in `out_dir`."""
  files.atomic_write(os.path.join(out_dir, MARKDOWN_FILE), markdown(results, class_names).encode())
  files.atomic_write(os.path.join(out_dir, PNG_FILE), render_png(results, class_names))
