"""Compare two image sets: `python -m jaxsynth.metrics.generation A B --features SPEC [...]`.

A is the reference (real) set, B the generated one; each is an .npz of images (or of saved
statistics), a sweep, or an image folder (metrics/image_sets.py). `compare_sets` is the library
function behind the command: it returns the flat dict `--json` prints (metrics/generation.py's
keys: `fid`, `kid_mean`, ..., `per_class.<name>.fid`, ...).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys

import numpy as np

from jaxsynth.errors import ConfigError, DataError, JaxsynthError
from jaxsynth.metrics import image_sets

log = logging.getLogger(__name__)

FAMILIES = ("fid", "kid", "pr", "dc", "mmd", "is")
TABLE_KEYS = ("n_real", "n_fake", "fid", "kid_mean", "kid_std", "precision", "recall", "f1",
              "density", "coverage", "mmd", "isc_mean")


def _check_pair(a: image_sets.ImageSet, b: image_sets.ImageSet, per_class: bool,
                per_group: bool) -> None:
  """One-line errors for sets that cannot be compared as asked."""
  sets = [s for s in (a, b) if s.stats is None]
  if len(sets) == 2 and a.images.shape[1:] != b.images.shape[1:]:
    raise DataError(f"image shapes differ: {a.name} has {a.images.shape[1:]} and {b.name} "
                    f"{b.images.shape[1:]}: compare sets of one size (resize one of them first)")
  for s in sets:
    if len(s) < 2:
      raise DataError(f"{s.name} has {len(s)} image(s): the metrics need at least 2 per set")
    if per_class and s.labels is None:
      raise DataError(f"{s.name} has no labels ('labels' or '{{split}}_labels'), but "
                      "--per-class was asked: add labels to it, or drop --per-class")
    if per_group and s.groups is None:
      raise DataError(f"{s.name} has no groups ('groups' or '{{split}}_groups'), but "
                      "--per-group was asked: add groups to it, or drop --per-group")
  if per_class:
    for s in sets:
      counts = np.bincount(s.labels)
      lonely = [int(c) for c in np.flatnonzero(counts == 1)]
      if lonely:
        raise DataError(f"{s.name}: class(es) {lonely} hold a single image, too few for any "
                        "per-class metric: add images of them, or drop --per-class")


def _names(a, b, attr: str) -> tuple[str, ...]:
  for s in (a, b):
    if getattr(s, attr):
      return tuple(getattr(s, attr))
  return ()


def _stats_fid(stats: dict, other, other_features, per_class: bool, class_names) -> dict:
  """FID (overall and per class where both sides have statistics) against saved statistics."""
  from jaxsynth.metrics import generation  # pylint: disable=import-outside-toplevel
  mu, sigma = generation.feature_stats(other_features)
  dim = other_features.shape[1]
  if stats["mu"].shape != (dim,):
    raise DataError(f"the saved statistics have {stats['mu'].shape[0]}-d features but "
                    f"--features gives {dim}-d: use the extractor the statistics were made with "
                    f"({stats.get('features') or 'unknown'})")
  n_stats = int(stats.get("num_samples") or 0)
  out = {"fid": generation.frechet_distance(stats["mu"], stats["sigma"], mu, sigma),
         "n_real": n_stats or None, "n_fake": int(len(other_features)), "feature_dim": dim}
  out["fid_reliable"] = bool(min(n_stats or math.inf, len(other_features)) > dim)
  if per_class and other.labels is not None:
    for c, (cmu, csigma, count) in (stats.get("per_class") or {}).items():
      if not isinstance(c, int):  # a class saved by name
        if c not in class_names:
          raise DataError(f"the saved statistics name class {c!r}, which is not among the "
                          f"other set's classes {list(class_names)}: use statistics of the "
                          "same classes")
        c = class_names.index(c)
      rows = other.labels == c
      name = class_names[c] if c < len(class_names) else str(c)
      if rows.sum() < 2:
        out[f"per_class.{name}.fid"] = None
        continue
      fmu, fsigma = generation.feature_stats(other_features[rows])
      out[f"per_class.{name}.fid"] = generation.frechet_distance(cmu, csigma, fmu, fsigma)
      out[f"per_class.{name}.n_real"] = int(count)
      out[f"per_class.{name}.n_fake"] = int(rows.sum())
      out[f"per_class.{name}.fid_reliable"] = bool(min(int(count), int(rows.sum())) > dim)
  return out


def compare_sets(a, b=None, *, features: str, split: str | None = None, per_class: bool = False,
                 per_group: bool = False, save_stats: str = "", k: int = 3,
                 kid_subsets: int = 100, kid_subset_size: int = 1000, seed: int = 0,
                 families=FAMILIES, batch_size: int = 128, plots: str = "",
                 progress: bool = True) -> dict:
  """The generation metrics of set B against set A (paths or ImageSets), as a flat dict.

  With `save_stats`, A's statistics (mu, sigma, per class when labelled) are saved there
  (pytorch-fid's .npz keys); B may then be None.
  """
  # pylint: disable=import-outside-toplevel  (jax loads after the inputs are checked)
  from jaxsynth.metrics import features as features_lib
  if not features:
    raise ConfigError(f"no feature extractor given: pass --features with one of "
                      f"{features_lib.extractor_options()}")
  features_lib.check_spec(features)
  a = a if isinstance(a, image_sets.ImageSet) else image_sets.load_set(a, split)
  b = b if (b is None or isinstance(b, image_sets.ImageSet)) else image_sets.load_set(b, split)
  if b is None and not save_stats:
    raise ConfigError("give two sets A B to compare, or one set with --save-stats FILE")
  if a.stats is not None and (b is None or b.stats is not None):
    raise DataError(f"{a.name} holds statistics, not images: give images on at least one side")
  _check_pair(a, b if b is not None else a, per_class and b is not None,
              per_group and b is not None)
  from jaxsynth.metrics import generation
  extractor = features_lib.make_extractor(features, batch_size=batch_size)
  outputs = {}
  for side, s in (("a", a), ("b", b)):
    if s is not None and s.stats is None:
      log.info("features of %s (%d images) with %s", s.name, len(s), extractor.name)
      outputs[side] = extractor.outputs(s.images, progress=progress)
  class_names = _names(a, b, "class_names") or tuple(
      next((s.stats.get("class_names", ()) for s in (a, b) if s is not None and s.stats), ()))
  if save_stats:
    if a.stats is not None:
      raise DataError(f"{a.name} already holds statistics: --save-stats needs images")
    feats = outputs["a"]["features"]
    per = generation.class_stats(feats, a.labels) if a.labels is not None else None
    generation.save_stats(save_stats, *generation.feature_stats(feats), per_class=per,
                          num_samples=len(feats), feature_name=extractor.name,
                          class_names=a.class_names)
    log.info("saved the statistics of %s to %s", a.name, save_stats)
    if b is None:
      return {"saved_stats": save_stats, "n_real": len(feats),
              "feature_dim": int(feats.shape[1])}
  if a.stats is not None or b.stats is not None:
    stats, other, side = (a.stats, b, "b") if a.stats is not None else (b.stats, a, "a")
    out = _stats_fid(stats, other, outputs[side]["features"], per_class, class_names)
  else:
    logits = outputs["b"].get("logits") if "is" in families else None
    out = generation.generation_metrics(
        outputs["a"]["features"], outputs["b"]["features"], real_labels=a.labels,
        fake_labels=b.labels, real_groups=a.groups, fake_groups=b.groups, per_class=per_class,
        per_group=per_group, class_names=class_names or None,
        group_names=_names(a, b, "group_names") or None, inception_logits=logits, k=k,
        kid_subsets=kid_subsets, kid_subset_size=kid_subset_size, seed=seed,
        which=tuple(f for f in families if f != "is" or logits is not None))
  out["features"] = extractor.name
  out["a"], out["b"] = a.name, b.name
  if plots:
    _write_plots(plots, out, a, b, class_names)
  return out


def _write_plots(directory: str, report: dict, a, b, class_names) -> None:
  """Per-class metric bars and per-class sample grids of A and B, as PNGs in `directory`."""
  from jaxsynth.metrics import plots  # pylint: disable=import-outside-toplevel
  os.makedirs(directory, exist_ok=True)
  for metric in ("kid_mean", "fid", "precision", "recall", "density", "coverage"):
    if any(key.startswith("per_class.") and key.endswith(f".{metric}") for key in report):
      plots.write_png(os.path.join(directory, f"per_class_{metric}.png"),
                      plots.metric_bars(report, metric, title=f"{metric} per class"))
  for side, s in (("a", a), ("b", b)):
    if s.stats is None and s.labels is not None:
      num_classes = max(int(s.labels.max()) + 1, len(class_names))
      plots.write_png(os.path.join(directory, f"grid_{side}.png"),
                      plots.class_grids(s.images, s.labels, num_classes, class_names or None,
                                        title=s.name))


def format_table(report: dict) -> str:
  """The report as a readable table: overall, then one row per class / group."""

  def cell(value):
    if value is None:
      return "n/a"
    if isinstance(value, bool):
      return "yes" if value else "NO"
    if isinstance(value, float):
      return f"{value:.4g}"
    return str(value)

  rows = [("overall", report)]
  for prefix in ("per_class", "per_group"):
    names = sorted({key.split(".")[1] for key in report if key.startswith(prefix + ".")},
                   key=lambda n: (len(n), n))
    for name in names:
      rows.append((f"{prefix[4:]} {name}", {key[len(f"{prefix}.{name}."):]: value
                                             for key, value in report.items()
                                             if key.startswith(f"{prefix}.{name}.")}))
  keys = [k for k in TABLE_KEYS if any(k in r for _, r in rows)]
  header = ["set"] + keys + ["fid reliable"]
  body = [[label] + [cell(r.get(k)) for k in keys] + [cell(r.get("fid_reliable"))]
          for label, r in rows]
  widths = [max(len(str(x)) for x in column) for column in zip(header, *body)]
  lines = ["  ".join(str(x).rjust(w) for x, w in zip(line, widths)) for line in [header] + body]
  notes = [f"{label}: {r['fid_note']}" for label, r in rows if r.get("fid_note")]
  lines += [f"features: {report.get('features')}"] + notes[:3]
  return "\n".join(lines)


def parse_args(argv):
  """The command line of `python -m jaxsynth.metrics.generation`."""
  parser = argparse.ArgumentParser(
      prog="python -m jaxsynth.metrics.generation",
      description="FID, KID, IS, precision/recall/F1, density/coverage and MMD of B against A, "
                  "overall, per class and per group.")
  parser.add_argument("a", help="reference (real) set: .npz of images or statistics, a sweep "
                      "(samples/ or its workdir), or an image folder with {split}.csv")
  parser.add_argument("b", nargs="?", help="generated set (same forms); optional with "
                      "--save-stats")
  parser.add_argument("--features", default="", help="classifier:WORKDIR | inception:WEIGHTS | "
                      "pixels[:SIZE]")
  parser.add_argument("--split", default=None, help="which {split}_* keys / {split}.csv to read")
  parser.add_argument("--per-class", action="store_true")
  parser.add_argument("--per-group", action="store_true")
  parser.add_argument("--save-stats", default="", help="save A's statistics to this .npz")
  parser.add_argument("--json", action="store_true", help="print the flat JSON dict")
  parser.add_argument("--plots", default="", help="write per-class bar charts and grids here")
  parser.add_argument("--k", type=int, default=3, help="k of the k-NN radii (precision/recall)")
  parser.add_argument("--kid-subsets", type=int, default=100)
  parser.add_argument("--kid-subset-size", type=int, default=1000)
  parser.add_argument("--metrics", default=",".join(FAMILIES),
                      help=f"families to compute, from {','.join(FAMILIES)}")
  parser.add_argument("--batch-size", type=int, default=128)
  parser.add_argument("--seed", type=int, default=0, help="seed of the KID subsets")
  return parser.parse_args(argv)


def main(argv=None) -> int:
  """Runs the command; a bad input is one line `jaxsynth: error: ...` and exit code 2."""
  args = parse_args(argv)
  logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
  families = tuple(f.strip() for f in args.metrics.split(",") if f.strip())
  try:
    unknown = [f for f in families if f not in FAMILIES]
    if unknown:
      raise ConfigError(f"--metrics {args.metrics!r}: unknown {unknown}; use some of "
                        f"{','.join(FAMILIES)}")
    if args.k < 1:
      raise ConfigError(f"--k {args.k}: use a positive integer, e.g. 3")
    if args.kid_subsets < 1 or args.kid_subset_size < 2:
      raise ConfigError(f"--kid-subsets {args.kid_subsets} --kid-subset-size "
                        f"{args.kid_subset_size}: use at least 1 subset of at least 2 samples")
    if args.batch_size < 1:
      raise ConfigError(f"--batch-size {args.batch_size}: use a positive integer")
    report = compare_sets(args.a, args.b, features=args.features, split=args.split,
                          per_class=args.per_class, per_group=args.per_group,
                          save_stats=args.save_stats, k=args.k, kid_subsets=args.kid_subsets,
                          kid_subset_size=args.kid_subset_size, seed=args.seed,
                          families=families, batch_size=args.batch_size, plots=args.plots)
  except JaxsynthError as e:
    print(f"jaxsynth: error: {e}", file=sys.stderr)
    return 2
  print(json.dumps(report, indent=2, sort_keys=True) if args.json else format_table(report))
  return 0
