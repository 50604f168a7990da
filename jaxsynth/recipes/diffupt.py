"""Pretraining on synthetic data, then fine-tuning on the real data: recipes `pretrain_finetune`
and `diffupt` (DiffuPT: a diffusion model's class-balanced set pretrains the classifier, which is
then fine-tuned on the real, imbalanced train split).

  pretrain_finetune  generator -> sample -> baseline -> pretrain -> finetune
  diffupt            generator -> sample -> baseline [-> filter] -> pretrain -> finetune

  generator  train_diffusion on the real train split (or recipe.generator_workdir, read only)
  sample     a sweep of recipe.pretrain_size samples split over the classes by recipe.ratio
             ("30-70": parts per class, DiffuPT Table 6; "" = balanced) with the largest-
             remainder rule; diffupt samples with classifier-free guidance recipe.cfg_scale
             (it replaces generator.sample.cfg_scale), pretrain_finetune with
             generator.sample.cfg_scale (3 by default, DiffuPT's w)
  baseline   train_classifier on the real train split (or recipe.baseline_workdir)
  filter     diffupt only, recipe.filter = classifier | realism | class_realism (none: no
             stage): task `filter` on the sweep, judged by (or with the features of) the
             baseline classifier; the other `filter.*` keys tune it
  pretrain   train_classifier on the synthetic set alone (data.synthetic.mix=only) at
             recipe.pretrain_lr; it selects its checkpoint on the real val split as usual
  finetune   train_classifier on the real train split from the pretrain stage's chosen
             checkpoint (train.init_from: params and BatchNorm statistics, fresh optimiser) at
             recipe.finetune_lr; the recipe's result, compared with the baseline in report.md

Every key is checked (and the class count read from the real data) when the pipeline is built,
before any stage runs or anything is written. The task functions are handed in (`tasks[name]`),
so this module never imports tasks/.
"""

from __future__ import annotations

import json
import math
import os

import ml_collections
import numpy as np

from jaxsynth import config as config_lib
from jaxsynth.data.sources import open_source
from jaxsynth.errors import ConfigError, DataError, JaxsynthError
from jaxsynth.recipes.pipeline import GENERATOR_FREE_KEYS, Pipeline, Stage, check_reused_run
from jaxsynth.synthesis.filters import filter_config
from jaxsynth.synthesis.sweep import largest_remainder
from jaxsynth.training import workdir as workdir_lib

#: recipe.filter -> the filter task's filter.name ("" = no filter stage).
FILTERS = {"none": "", "classifier": "classifier", "realism": "realism",
           "class_realism": "realism_class"}
#: filter.* keys the recipe sets itself (the others are passed to the filter stage).
RECIPE_SET_FILTER_KEYS = ("name", "classifier")


def _bad(key: str, value, fix: str) -> ConfigError:
  return ConfigError(f"config key '{key}' has bad value {value!r}: {fix}")


def parse_ratio(ratio: str, num_classes: int) -> np.ndarray:
  """The parts per class of `recipe.ratio` ("30-70"; "" = one part each), one per class."""
  if not ratio:
    return np.ones(num_classes, np.int64)
  fix = ("give whole parts per class joined by '-', e.g. '30-70' for two classes, or '' for a "
         "balanced set")
  try:
    parts = np.asarray([int(p) for p in str(ratio).split("-")], np.int64)
  except ValueError:
    raise _bad("recipe.ratio", ratio, fix) from None
  if np.any(parts < 0) or parts.sum() == 0:
    raise _bad("recipe.ratio", ratio, f"parts must be >= 0 and not all 0; {fix}")
  if parts.size != num_classes:
    example = "-".join(["1"] * num_classes)
    raise ConfigError(f"config key 'recipe.ratio' = {ratio!r} gives {parts.size} parts but the "
                      f"data has {num_classes} classes: give one part per class (e.g. "
                      f"'{example}'), or '' for a balanced set")
  return parts


def pretrain_counts(config, num_classes: int) -> np.ndarray:
  """Synthetic samples per class of the pretraining set: recipe.pretrain_size split by
  recipe.ratio with the largest-remainder rule (sums exactly to pretrain_size)."""
  parts = parse_ratio(config.recipe.ratio, num_classes)
  return largest_remainder(int(config.recipe.pretrain_size), parts)


def check_options(config) -> None:
  """Raises ConfigError naming the first bad recipe key of pretrain_finetune / diffupt."""
  r = config.recipe
  if not (isinstance(r.pretrain_size, int) and r.pretrain_size >= 1):
    raise _bad("recipe.pretrain_size", r.pretrain_size,
               "give the number of synthetic samples to pretrain on, e.g. 5000")
  for key in ("pretrain_lr", "finetune_lr"):
    if not (r[key] > 0 and math.isfinite(r[key])):
      raise _bad(f"recipe.{key}", r[key], "use a positive learning rate, e.g. 1e-4")
  if r.name != "diffupt":
    return
  if not (r.cfg_scale >= 0 and math.isfinite(r.cfg_scale)):
    raise _bad("recipe.cfg_scale", r.cfg_scale,
               "use a guidance scale >= 0 (DiffuPT: 3; 0 = conditional sampling)")
  if r.filter not in FILTERS:
    raise _bad("recipe.filter", r.filter, f"use one of {', '.join(FILTERS)}")
  for key in RECIPE_SET_FILTER_KEYS:
    if config.filter[key]:
      raise _bad(f"filter.{key}", config.filter[key],
                 "the diffupt recipe sets it (recipe.filter names the filter, the baseline stage "
                 "is its classifier): leave it empty")


def real_class_count(config) -> int:
  """The class count of the recipe's real train split."""
  return open_source(config.data, "train", seed=config.seed).num_classes


def check_generator(config, directory: str, stage_config, num_classes: int) -> None:
  """Raises ConfigError unless `directory` (recipe.generator_workdir) holds a finished generator
  of the recipe's data: the same class count first, then every result key."""
  key = "recipe.generator_workdir"
  try:
    trained = config_lib.read_run_config(directory, stage_config.task, key)
    data = ml_collections.ConfigDict(trained["data"])
    theirs = open_source(data, "train", seed=int(trained.get("seed", 0))).num_classes
  except (JaxsynthError, KeyError, TypeError, ValueError, OSError):
    theirs = None   # not readable as a run: check_reused_run says what is wrong
  if theirs is not None and theirs != num_classes:
    raise ConfigError(f"config key '{key}': the generator in {directory} was trained on data "
                      f"with {theirs} classes ({data.source} {data.path}) but the classifier "
                      f"data has {num_classes} ({config.data.source} {config.data.path}): give a "
                      "generator trained on this data, or leave the key empty to train one here")
  check_reused_run(directory, stage_config, key, GENERATOR_FREE_KEYS)


def pretrain_config(config, synthetic_dir: str):
  """The pretrain stage: train_classifier on the synthetic set alone at recipe.pretrain_lr."""
  from jaxsynth.recipes.synthesis import classifier_config  # pylint: disable=import-outside-toplevel
  out = classifier_config(config, (os.path.abspath(synthetic_dir),))
  out.data.synthetic.mix = "only"
  out.train.learning_rate = float(config.recipe.pretrain_lr)
  return out


def finetune_config(config, pretrain_dir: str):
  """The finetune stage: train_classifier on the real train split from the pretrain stage's
  chosen checkpoint (train.init_from) at recipe.finetune_lr."""
  from jaxsynth.recipes.synthesis import classifier_config  # pylint: disable=import-outside-toplevel
  out = classifier_config(config)
  out.train.init_from = os.path.abspath(pretrain_dir)
  out.train.learning_rate = float(config.recipe.finetune_lr)
  return out


def filter_stage_config(config, sample_dir: str, baseline_dir: str):
  """The filter task's config: recipe.filter on the sweep, the baseline as its classifier."""
  out = config_lib.base_config("filter")
  out.seed, out.mesh = config.seed, config.mesh
  out = out.copy_and_resolve_references()
  out.filter = filter_config(with_input=True)
  out.filter.update({k: v for k, v in config.filter.items() if k not in RECIPE_SET_FILTER_KEYS})
  out.filter.input = os.path.abspath(sample_dir)
  out.filter.name = FILTERS[config.recipe.filter]
  out.filter.classifier = os.path.abspath(baseline_dir)
  return out


def _pretrain_run(train, filter_dir: str):
  """The pretrain stage's run: `train`, after checking the filter kept some samples."""

  def run(config, directory, stop=None):
    if filter_dir:
      try:
        with open(os.path.join(filter_dir, workdir_lib.METRICS_FILE), encoding="utf-8") as f:
          kept = json.load(f).get("accepted")
      except (OSError, ValueError):
        kept = None
      if kept == 0:
        raise DataError(f"the filter stage ({filter_dir}) kept none of the samples, so there is "
                        "nothing to pretrain on: loosen it (filter.min_confidence, "
                        "filter.threshold), sample more (recipe.pretrain_size), or set "
                        "recipe.filter=none")
    return train(config, directory, stop=stop)

  return run


def _pipeline(config, workdir: str, tasks: dict, with_filter: bool) -> Pipeline:
  # pylint: disable=import-outside-toplevel  (synthesis imports this module for RECIPES)
  from jaxsynth.recipes.synthesis import (autoencoder_stages, classifier_config,
                                          generator_config, generator_task, sample_config)
  check_options(config)
  r = config.recipe
  num_classes = real_class_count(config)
  counts = pretrain_counts(config, num_classes)
  generator = generator_config(config, workdir)
  filter_name = FILTERS[r.filter] if with_filter else ""
  stages = autoencoder_stages(config, workdir, tasks) + [
      Stage("generator", generator, generator_task(config, tasks), reuse=r.generator_workdir,
            reuse_key="recipe.generator_workdir",
            check_reuse=lambda d: check_generator(config, d, generator, num_classes)),
      Stage("sample", None, tasks["sample"]),
      Stage("baseline", classifier_config(config), tasks["train_classifier"],
            reuse=r.baseline_workdir, reuse_key="recipe.baseline_workdir"),
  ]
  if filter_name:
    stages.append(Stage("filter", None, tasks["filter"]))
  stages += [Stage("pretrain", None, None), Stage("finetune", None, tasks["train_classifier"])]
  pipe = Pipeline(r.name, workdir, stages)
  # later stages read earlier stages' outputs by name
  sample = sample_config(config, pipe.dir("generator"), workdir)
  sample.sample.budget = "counts"
  sample.sample.class_counts = tuple(int(c) for c in counts)
  if r.name == "diffupt":
    sample.sample.cfg_scale = float(r.cfg_scale)
  pipe.stages["sample"].config = sample
  synthetic = pipe.dir("sample")
  if filter_name:
    pipe.stages["filter"].config = filter_stage_config(config, synthetic, pipe.dir("baseline"))
    synthetic = pipe.dir("filter")
  pipe.stages["pretrain"].config = pretrain_config(config, synthetic)
  pipe.stages["pretrain"].run = _pretrain_run(tasks["train_classifier"],
                                              pipe.dir("filter") if filter_name else "")
  pipe.stages["finetune"].config = finetune_config(config, pipe.dir("pretrain"))
  return pipe


def pretrain_finetune_pipeline(config, workdir: str, tasks: dict) -> Pipeline:
  """[autoencoder ->] generator -> sample (recipe.ratio) -> baseline -> pretrain (synthetic
  only) -> finetune."""
  return _pipeline(config, workdir, tasks, with_filter=False)


def diffupt_pipeline(config, workdir: str, tasks: dict) -> Pipeline:
  """[autoencoder ->] generator -> sample (guided, recipe.cfg_scale) -> baseline -> filter
  (recipe.filter; none: no stage) -> pretrain (synthetic only) -> finetune."""
  return _pipeline(config, workdir, tasks, with_filter=True)
