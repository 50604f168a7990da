"""Synthesis recipes on the stage pipeline: each stage's config is derived from the recipe
config (configs/synthesis.py), and the recipe is compared with its baseline in report.md.

`augment` (stages generator -> sample -> baseline -> augmented): train a class-conditional
generator on the real train split, sample a sweep (generator.sample.budget: `balance` fills every
class up to the largest, `counts` adds N per class), and train the classifier on real + synthetic
(data.synthetic, count mix) beside the baseline trained on the real data with the same seed.
The task functions are handed in (`tasks`: name -> function), so this module never imports
tasks/.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from typing import Callable

import numpy as np

from jaxsynth import config as config_lib
from jaxsynth import files
from jaxsynth.data.sources import open_source
from jaxsynth.errors import ConfigError
from jaxsynth.recipes import diffupt, equal_scale, iois, recipe_report
from jaxsynth.recipes.pipeline import GENERATOR_FREE_KEYS, Pipeline, Stage
from jaxsynth.training import workdir as workdir_lib

#: Metrics of the report's table, when the split has them.
TABLE_METRICS = ("accuracy", "balanced_accuracy", "macro_f1", "mcc", "auc", "sensitivity",
                 "specificity", "harmonic_mean")


def classifier_config(config, synthetic_paths=()):
  """A train_classifier config: the recipe's data/model/train/evaluate, recipe.classifier's loss."""
  out = config_lib.base_config("train_classifier")
  for key in ("seed", "data", "model", "train", "mesh", "evaluate"):
    out[key] = config[key]
  out = out.copy_and_resolve_references()
  out.recipe.name = config.recipe.classifier
  out.data.synthetic.paths = tuple(synthetic_paths)
  return out


def generator_seed(config) -> int:
  """The generator's training seed: generator.seed, or the recipe's seed when it is -1."""
  seed = int(config.generator.get("seed", -1))
  return int(config.seed) if seed < 0 else seed


#: The recipes that take a GAN generator (generator.gan): those that only sample a sweep.
GAN_RECIPES = ("augment", "pretrain_finetune", "diffupt")

#: The stage that trains an LDM generator's autoencoder when the recipe trains one.
AUTOENCODER_STAGE = "autoencoder"


def trains_autoencoder(config) -> bool:
  """True when the recipe trains its LDM generator's autoencoder itself (stage `autoencoder`):
  generator.latent.autoencoder_run is empty and no finished generator is reused."""
  latent = config.generator.get("latent")
  return (latent is not None and not latent.autoencoder_run
          and config.generator.get("autoencoder") is not None
          and not config.recipe.generator_workdir)


def autoencoder_config(config):
  """The train_autoencoder config of stage `autoencoder`: the recipe's real data, the
  generator's seed and the generator.autoencoder.* keys (model, train, loss)."""
  from configs import autoencoder  # pylint: disable=import-outside-toplevel  (config files)
  keys = config.generator.autoencoder
  out = autoencoder.get_config(keys.model.name)
  for key in ("model", "train", "loss"):
    out[key] = keys[key]
  out.seed, out.mesh, out.data = generator_seed(config), config.mesh, config.data
  out = out.copy_and_resolve_references()
  out.data.synthetic.paths = ()
  return out


def autoencoder_stages(config, workdir: str, tasks: dict) -> list[Stage]:
  """[Stage `autoencoder`] when the recipe trains its LDM generator's autoencoder, else []."""
  if not trains_autoencoder(config):
    return []
  return [Stage(AUTOENCODER_STAGE, autoencoder_config(config), tasks["train_autoencoder"],
                directory=os.path.join(workdir, AUTOENCODER_STAGE))]


def is_gan_generator(config) -> bool:
  """True when the recipe's generator is a GAN (generator.gan keys: the *_gan variants of
  configs/synthesis.py), trained by task train_gan."""
  return config.generator.get("gan") is not None


def generator_task(config, tasks: dict) -> Callable:
  """The task that trains the recipe's generator: train_gan or train_diffusion."""
  return tasks["train_gan"] if is_gan_generator(config) else tasks["train_diffusion"]


def gan_generator_config(config):
  """The train_gan config: the recipe's real data, generator.seed, generator.model/train/gan."""
  from configs import bagan_gp  # pylint: disable=import-outside-toplevel  (config files)
  out = bagan_gp.get_config(config.generator.model.name)
  for key in ("model", "train", "gan"):
    out[key] = config.generator[key]
  out.seed, out.mesh, out.data = generator_seed(config), config.mesh, config.data
  out = out.copy_and_resolve_references()
  out.data.synthetic.paths = ()
  return out


def generator_config(config, workdir: str = ""):
  """The train_diffusion (or, for a GAN generator, train_gan) config: the recipe's real data,
  generator.seed, generator.* keys; an LDM generator whose autoencoder the recipe trains reads
  it from WORKDIR/autoencoder."""
  from configs import diffusion  # pylint: disable=import-outside-toplevel  (config files)
  if is_gan_generator(config):
    return gan_generator_config(config)
  latent = config.generator.get("latent")
  out = diffusion.get_config("unet" if latent is None else "ldm")
  for key in ("model", "train", "diffusion", "sample") + (("latent",) if latent is not None else ()):
    out[key] = config.generator[key]
  out.seed, out.mesh, out.data = generator_seed(config), config.mesh, config.data
  out = out.copy_and_resolve_references()
  out.data.synthetic.paths = ()
  if workdir and trains_autoencoder(config):
    out.latent.autoencoder_run = os.path.abspath(os.path.join(workdir, AUTOENCODER_STAGE))
  return out


def sample_config(config, generator_dir: str, workdir: str = ""):
  """The sample config: the generator's config (`generator_config(config, workdir)`) with
  task=sample from `generator_dir`, drawn with the recipe's seed (so every classifier seed gets
  its own synthetic set)."""
  if is_gan_generator(config):   # the sample task's own keys, generator.sample's values
    from configs import diffusion  # pylint: disable=import-outside-toplevel  (config files)
    out = diffusion.get_config("sample")
    out.sample = config.generator.sample
    out.mesh, out.data = config.mesh, config.data
    out = out.copy_and_resolve_references()
    out.data.synthetic.paths = ()
  else:
    out = generator_config(config, workdir)
    out.task = "sample"
  out.seed = int(config.seed)
  out.sample.run_dir = os.path.abspath(generator_dir)
  return out


def check_config(config) -> None:
  """Raises ConfigError for a bad recipe key."""
  if config.recipe.name not in RECIPES:
    raise ConfigError(f"config key 'recipe.name' has bad value {config.recipe.name!r} for task "
                      f"recipe; use one of {', '.join(RECIPES)}")
  latent = config.generator.get("latent")
  if latent is not None and not latent.autoencoder_run and \
      config.generator.get("autoencoder") is None:
    raise ConfigError("config key 'generator.latent.autoencoder_run' is empty: a latent diffusion "
                      "generator needs a finished train_autoencoder run (configs/autoencoder.py) "
                      "on the recipe's data keys, or generator.autoencoder.* keys to train one "
                      "(the *_ldm variants of configs/synthesis.py have them)")
  if is_gan_generator(config) and config.recipe.name not in GAN_RECIPES:
    raise ConfigError(f"config key 'recipe.name' = {config.recipe.name!r} needs a diffusion "
                      "generator (online/offline: classifier guidance; equal_scale: (class, "
                      f"group) conditioning); a GAN generator (generator.gan) serves "
                      f"{', '.join(GAN_RECIPES)}")
  features = config.recipe.get("report_features", "")
  if features not in ("", "none"):   # checked now, not after every stage has run
    from jaxsynth.metrics.features import check_spec  # pylint: disable=import-outside-toplevel
    try:
      check_spec(features)
    except ConfigError as e:
      raise ConfigError(f"config key 'recipe.report_features': {e} (or leave it empty for the "
                        "baseline classifier's features, or none)") from None


def augment_pipeline(config, workdir: str, tasks: dict) -> Pipeline:
  """[autoencoder ->] generator -> sample -> baseline -> augmented (the recipe's classifier is
  `augmented`)."""
  r = config.recipe
  stages = autoencoder_stages(config, workdir, tasks) + [
      Stage("generator", generator_config(config, workdir), generator_task(config, tasks),
            reuse=r.generator_workdir, reuse_key="recipe.generator_workdir",
            free_keys=GENERATOR_FREE_KEYS),
      Stage("sample", None, tasks["sample"]),
      Stage("baseline", classifier_config(config), tasks["train_classifier"],
            reuse=r.baseline_workdir, reuse_key="recipe.baseline_workdir"),
      Stage("augmented", None, tasks["train_classifier"]),
  ]
  pipe = Pipeline(r.name, workdir, stages)
  # later stages read earlier stages' outputs by name
  pipe.stages["sample"].config = sample_config(config, pipe.dir("generator"), workdir)
  pipe.stages["augmented"].config = classifier_config(
      config, (os.path.abspath(pipe.dir("sample")),))
  return pipe


@dataclasses.dataclass(frozen=True)
class Recipe:
  """A synthesis recipe: its pipeline builder fn(config, workdir, tasks) -> Pipeline, and the
  stages holding the recipe's classifier and the baseline it is compared with."""
  build: Callable[..., Pipeline]
  result_stage: str
  baseline_stage: str = "baseline"
  synthetic_stage: str = ""   # the stage whose data.synthetic.paths the report shows (default
  #                             result_stage)
  report_sections: Callable[..., list] | None = None  # fn(pipe, results) -> report.md lines


#: recipe.name -> Recipe. A new recipe adds its entry here (its builder in its own module).
RECIPES: dict[str, Recipe] = {
    "augment": Recipe(augment_pipeline, "augmented"),
    "equal_scale": Recipe(equal_scale.pipeline, "balanced",
                          report_sections=equal_scale.report_sections),
    "pretrain_finetune": Recipe(diffupt.pretrain_finetune_pipeline, "finetune",
                                synthetic_stage="pretrain"),
    "diffupt": Recipe(diffupt.diffupt_pipeline, "finetune", synthetic_stage="pretrain"),
    "online": Recipe(iois.online_pipeline, "online", report_sections=iois.report_sections),
    "offline": Recipe(iois.offline_pipeline, "offline"),
}


def pipeline(config, workdir: str, tasks: dict) -> Pipeline:
  """The pipeline of recipe `config.recipe.name` in `workdir`."""
  check_config(config)
  return RECIPES[config.recipe.name].build(config, workdir, tasks)


def comparison(baseline: dict, recipe: dict, split: str = "test") -> dict:
  """{metric: {"baseline", "recipe", "delta"}} and per-class accuracy change on `split`."""
  b, r = baseline.get(split, {}), recipe.get(split, {})
  out = {}
  for name in TABLE_METRICS:
    if b.get(name) is not None and r.get(name) is not None:
      out[name] = {"baseline": b[name], "recipe": r[name], "delta": r[name] - b[name]}
  per_class = {"baseline": b.get("per_class_accuracy"), "recipe": r.get("per_class_accuracy")}
  if per_class["baseline"] and per_class["recipe"]:
    per_class["delta"] = (np.asarray(per_class["recipe"])
                          - np.asarray(per_class["baseline"])).tolist()
  return {"split": split, "metrics": out, "per_class_accuracy": per_class}


def report_markdown(name: str, table: dict, stages: dict, command: str, class_names=(),
                    extra=()) -> str:
  """report.md: the recipe against its baseline, per-class change, the `extra` sections
  (recipe_report.markdown_sections), stages and the command."""
  lines = [f"# Recipe `{name}` vs baseline ({table['split']} split)", "",
           "| metric | baseline | recipe | change |", "|---|---|---|---|"]
  for metric, row in table["metrics"].items():
    lines.append(f"| {metric} | {row['baseline']:.4f} | {row['recipe']:.4f} | "
                 f"{row['delta']:+.4f} |")
  per_class = table["per_class_accuracy"]
  if per_class.get("delta") is not None:
    lines += ["", "| class | baseline | recipe | change |", "|---|---|---|---|"]
    names = list(class_names) or [str(c) for c in range(len(per_class["delta"]))]
    for c, (b, r, d) in enumerate(zip(per_class["baseline"], per_class["recipe"],
                                      per_class["delta"])):
      lines.append(f"| {names[c]} | {b:.4f} | {r:.4f} | {d:+.4f} |")
  lines += list(extra)
  lines += ["", "## Stages", ""]
  lines += [f"- `{stage}`: {where}" for stage, where in stages.items()]
  lines += ["", "## Command", "", f"    {command}", ""]
  return "\n".join(lines)


def _shown(directory: str, workdir: str) -> str:
  """`directory` relative to `workdir` when inside it (so a report does not name the workdir)."""
  here, there = os.path.abspath(workdir), os.path.abspath(directory)
  return os.path.relpath(there, here) if there.startswith(here + os.sep) else directory


def report_extras(config, workdir: str, pipe: Pipeline, spec: Recipe, table: dict) -> dict:
  """The report's figures, the generator's per-class FID/KID on the synthetic set the recipe
  trained on, and the filters' acceptance (recipe_report)."""
  names = list(open_source(config.data, "train", seed=config.seed).class_names)
  stage = pipe.stages[spec.synthetic_stage or spec.result_stage]
  paths = tuple(stage.config.data.synthetic.paths) if stage.config is not None else ()
  synthetic = recipe_report.synthetic_set(paths)
  generator = None
  features = config.recipe.get("report_features", "") or \
      f"classifier:{os.path.abspath(pipe.dir(spec.baseline_stage))}"
  if synthetic is not None and len(synthetic) > 1 and features != "none":
    generator = recipe_report.generator_metrics(config, synthetic, features)
    kind, _, where = generator["features"].partition(":")
    if kind == "classifier":   # the baseline's directory, relative when inside the workdir
      generator["features"] = f"classifier:{_shown(where, workdir)}"
  return {"class_names": names,
          "figures": recipe_report.figures(workdir, table, names, synthetic),
          "generator": generator,
          "acceptance": recipe_report.filter_acceptance(
              {name: pipe.dir(name) for name in pipe.stages})}


def run(config, workdir: str, tasks: dict, command: str, stop=None,
        overwrite: bool = False) -> dict:
  """Runs the recipe's pipeline in `workdir`, then writes report.md and metrics.json; with
  `overwrite`, the stages in `workdir` are run again (reused runs are never touched)."""
  pipe = pipeline(config, workdir, tasks)
  spec = RECIPES[config.recipe.name]
  pipe.check()
  if overwrite:
    for stage in pipe.stages.values():
      if not stage.reuse:
        shutil.rmtree(stage.directory, ignore_errors=True)
  results = pipe.run(stop)
  table = comparison(results[spec.baseline_stage], results[spec.result_stage])
  stages = {name: _shown(pipe.dir(name), workdir) for name in pipe.stages}
  workdir_lib.write_json(os.path.join(workdir, "comparison.json"), table)
  extras = report_extras(config, workdir, pipe, spec, table)
  text = report_markdown(config.recipe.name, table, stages, command, extras["class_names"],
                         recipe_report.markdown_sections(extras["figures"], extras["generator"],
                                                         extras["acceptance"])
                         + (spec.report_sections(pipe, results) if spec.report_sections else []))
  files.atomic_write(os.path.join(workdir, "report.md"), text.encode())
  metrics = {"recipe": results[spec.result_stage], "baseline": results[spec.baseline_stage],
             "comparison": table, "stages": stages, "generator": extras["generator"],
             "filter_acceptance": extras["acceptance"], "figures": extras["figures"]}
  workdir_lib.write_json(os.path.join(workdir, workdir_lib.METRICS_FILE), metrics)
  return metrics
