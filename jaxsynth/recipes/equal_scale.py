"""FairDiff's equal-scale data balancing (applied to classification): every group of a sensitive
attribute ends with N_target training samples — groups above it are subsampled (a fixed draw
from the seed), groups below it are filled with synthetic samples of that group, split over
classes in proportion to the group's own class counts (so (class, group) cells keep their
shape).

Recipe `equal_scale` (task `recipe`, configs/synthesis.py:equal_scale), stages:

  generator  train_diffusion on the whole real train split, conditioned on (class, group)
             cells (diffusion.condition = recipe.condition = class_group)
  sample     the sweep of the plan's per-(class, group) counts (sample.cell_counts)
  baseline   train_classifier on the real train split
  balanced   train_classifier on the kept real samples (data.train_indices_file, written by this
             stage into its own directory, named by the indices' digest) + the synthetic set;
             its mixture.json shows every group at N_target

A group-only generator (condition=group) is refused: its samples carry no class label, and a
classifier cannot train on them. The task functions are handed in (`tasks[name]`), so this
module never imports tasks/.
"""

from __future__ import annotations

import hashlib
import io
import json
import os

import numpy as np

from jaxsynth import files
from jaxsynth.data import base
from jaxsynth.data.pipeline import stream_rng
from jaxsynth.data.sources import open_source
from jaxsynth.errors import ConfigError, DataError
from jaxsynth.recipes.pipeline import GENERATOR_FREE_KEYS, Pipeline, Stage
from jaxsynth.synthesis.sweep import largest_remainder
from jaxsynth.training import workdir as workdir_lib

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


PLAN_FILE = "equal_scale.json"   # the plan the balanced stage trained on (beside its indices)
CONDITIONS = ("class_group", "group")


def check_condition(condition: str) -> None:
  """Raises ConfigError unless `recipe.condition` gives class-labelled synthetic samples."""
  if condition == "group":
    raise ConfigError("config key 'recipe.condition' = 'group': a group-only generator's "
                      "samples carry no class label (its sweep writes label 0), so a classifier "
                      "cannot train on them; use recipe.condition=class_group")
  if condition not in CONDITIONS:
    raise ConfigError(f"config key 'recipe.condition' has bad value {condition!r}: use "
                      "class_group")


def cell_counts(synthetic: np.ndarray, num_groups: int) -> tuple[int, ...]:
  """The class-major sample.cell_counts (id = class * num_groups + group) of a plan's
  (groups, classes) synthetic counts, padded to `num_groups` groups."""
  padded = np.zeros((num_groups, synthetic.shape[1]), np.int64)
  padded[:synthetic.shape[0]] = synthetic
  return tuple(int(n) for n in padded.T.reshape(-1))


def _npy_bytes(array: np.ndarray) -> bytes:
  buffer = io.BytesIO()
  np.save(buffer, np.asarray(array, np.int64), allow_pickle=False)
  return buffer.getvalue()


def plan_for(config) -> dict:
  """The equal-scale plan of `config`'s real train split (equal_scale_plan) and its summary;
  DataError (nothing written) when the data has no groups, ConfigError for a bad target."""
  r = config.recipe
  train = open_source(config.data, "train", seed=config.seed)
  where = f"the train split of data.source={config.data.source}"
  if config.data.path:
    where += f" data.path={config.data.path}"
  groups = group_ids(train, where)
  target = int(r.get("target", 0))
  if target < 0:
    raise ConfigError(f"config key 'recipe.target' has bad value {target}: use 0 (the largest "
                      "group's size) or the samples every group should have")
  plan = equal_scale_plan(train.labels, groups, train.num_classes, config.seed, target)
  n_groups = max(base.num_groups(train), plan["synthetic"].shape[0])
  sizes = np.bincount(groups, minlength=n_groups)
  if plan["synthetic"].sum() == 0:
    raise ConfigError(f"config key 'recipe.target' = {target}: every group of {where} already "
                      f"has at least {plan['target']} samples (group sizes {sizes.tolist()}), so "
                      "equal_scale generates nothing; raise recipe.target above the smallest "
                      "group, or use recipe.target=0 (the largest group)")
  kept = np.bincount(groups[plan["keep"]], minlength=n_groups)
  synthetic = np.zeros(n_groups, np.int64)
  synthetic[:plan["synthetic"].shape[0]] = plan["synthetic"].sum(axis=1)
  data = _npy_bytes(plan["keep"])
  digest = hashlib.sha256(data).hexdigest()[:12]
  summary = {"target": plan["target"], "seed": int(config.seed), "condition": "class_group",
             "group_names": list(getattr(train, "group_names", ()) or
                                 [str(g) for g in range(n_groups)]),
             "real_group_counts": sizes.tolist(), "kept_group_counts": kept.tolist(),
             "synthetic_group_counts": synthetic.tolist(),
             "balanced_group_counts": (kept + synthetic).tolist(),
             "cell_counts": list(cell_counts(plan["synthetic"], n_groups)),
             "kept": int(plan["keep"].size), "train": len(train), "indices_sha256": digest}
  return {"plan": plan, "summary": summary, "indices_bytes": data, "num_groups": n_groups}


def _balanced_run(train_fn, indices_path: str, indices: bytes, summary: dict):
  """The balanced stage: writes its train indices and plan (once), then trains the classifier."""

  def run(config, directory, stop=None):
    if workdir_lib.finished_results(directory, config, overwrite=False) is None:
      workdir_lib.check_prepare(directory, config, overwrite=False)  # refuse before writing
    if not os.path.isfile(indices_path):
      files.atomic_write(indices_path, indices)
    workdir_lib.write_json(os.path.join(directory, PLAN_FILE),
                           dict(summary, indices_file=os.path.basename(indices_path)))
    return train_fn(config, directory, stop=stop)

  return run


def pipeline(config, workdir: str, tasks: dict) -> Pipeline:
  """generator -> sample -> baseline -> balanced: FairDiff's equal-scale set for a classifier."""
  # pylint: disable=import-outside-toplevel  (synthesis imports this module for RECIPES)
  from jaxsynth.recipes.synthesis import (autoencoder_stages, classifier_config,
                                          generator_config, sample_config)
  r = config.recipe
  if config.data.get("train_indices_file", ""):
    raise ConfigError("config key 'data.train_indices_file' is set, but recipe equal_scale "
                      "chooses the real subset itself: leave it empty")
  condition = r.get("condition", "class_group")
  check_condition(condition)
  made = plan_for(config)
  generator = generator_config(config, workdir)
  generator.diffusion.condition = condition
  stages = autoencoder_stages(config, workdir, tasks) + [
      Stage("generator", generator, tasks["train_diffusion"],
            reuse=r.generator_workdir, reuse_key="recipe.generator_workdir",
            free_keys=GENERATOR_FREE_KEYS),
      Stage("sample", None, tasks["sample"]),
      Stage("baseline", classifier_config(config), tasks["train_classifier"],
            reuse=r.baseline_workdir, reuse_key="recipe.baseline_workdir"),
      Stage("balanced", None, None),
  ]
  pipe = Pipeline(r.name, workdir, stages)
  sample = sample_config(config, pipe.dir("generator"), workdir)
  sample.diffusion.condition = condition
  sample.sample.update(budget="counts", class_counts=(), group_counts=(),
                       cell_counts=made["summary"]["cell_counts"])
  pipe.stages["sample"].config = sample
  balanced_dir = os.path.abspath(pipe.dir("balanced"))
  indices_path = os.path.join(balanced_dir,
                              f"train_indices-{made['summary']['indices_sha256']}.npy")
  balanced = classifier_config(config, (os.path.abspath(pipe.dir("sample")),))
  balanced.data.train_indices_file = indices_path
  pipe.stages["balanced"].config = balanced
  pipe.stages["balanced"].run = _balanced_run(tasks["train_classifier"], indices_path,
                                              made["indices_bytes"], made["summary"])
  return pipe


def _fmt(value) -> str:
  return "-" if value is None else f"{value:.4f}"


def report_sections(pipe: Pipeline, results: dict, split: str = "test") -> list[str]:
  """report.md lines: the training set per group (real, kept, synthetic, balanced) and the
  per-group figures with equity-scaled (ES) metrics of the baseline and the balanced stage."""
  try:
    with open(os.path.join(pipe.dir("balanced"), PLAN_FILE), encoding="utf-8") as f:
      plan = json.load(f)
  except (OSError, ValueError):
    plan = None
  lines = []
  if plan is not None:
    lines += ["", f"## Training set per group (FairDiff equal scale, N_target = "
                  f"{plan['target']})", "",
              "| group | real | kept real | synthetic | balanced |", "|---|---|---|---|---|"]
    for g, name in enumerate(plan["group_names"]):
      lines.append(f"| {name} | {plan['real_group_counts'][g]} | "
                   f"{plan['kept_group_counts'][g]} | {plan['synthetic_group_counts'][g]} | "
                   f"{plan['balanced_group_counts'][g]} |")
  b = results.get("baseline", {}).get(split, {}).get("groups")
  r = results.get("balanced", {}).get(split, {}).get("groups")
  if not (b and r):
    return lines
  metrics = [k for k in ("accuracy", "auc", "sensitivity", "specificity")
             if f"es_{k}" in b and f"es_{k}" in r]
  header = " | ".join(f"{m} baseline | {m} recipe" for m in metrics)
  lines += ["", f"## Per group ({split} split)", "", f"| group | n | {header} |",
            "|---|---|" + "---|" * (2 * len(metrics))]
  for name, row in r["per_group"].items():
    base_row = b["per_group"].get(name, {})
    cells = " | ".join(f"{_fmt(base_row.get(m))} | {_fmt(row.get(m))}" for m in metrics)
    lines.append(f"| {name} | {row['n']} | {cells} |")
  es = " | ".join(f"{_fmt(b[f'es_{m}'])} | {_fmt(r[f'es_{m}'])}" for m in metrics)
  lines.append(f"| ES (equity-scaled) | | {es} |")
  return lines
