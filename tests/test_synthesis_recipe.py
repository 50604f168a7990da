"""Task `recipe` (augment) end to end on the tiny config: stages, skip/resume, reuse, report."""

import json
import os
import shutil

import pytest

from configs import synthesis
from jaxsynth.errors import ConfigError
from jaxsynth.tasks.recipe import recipe


def table(workdir):
  with open(os.path.join(workdir, "metrics.json"), encoding="utf-8") as f:
    metrics = json.load(f)
  return metrics["comparison"], metrics["recipe"]["test"], metrics["baseline"]["test"]


@pytest.fixture(scope="module")
def augment_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("augment"))
  recipe(synthesis.get_config("augment_tiny"), workdir)
  return workdir


def test_augment_runs_every_stage_and_writes_the_report(augment_run):
  for stage in ("generator", "sample", "baseline", "augmented"):
    assert os.path.isfile(os.path.join(augment_run, stage, "metrics.json")), stage
  mixture = json.load(open(os.path.join(augment_run, "augmented", "mixture.json")))
  assert mixture["parts"][1]["class_counts"] == [4] * 10  # generator.sample.class_counts
  assert not os.path.exists(os.path.join(augment_run, "baseline", "mixture.json"))
  report = open(os.path.join(augment_run, "report.md"), encoding="utf-8").read()
  assert "| balanced_accuracy |" in report and "## Command" in report
  comparison, ours, base = table(augment_run)
  row = comparison["metrics"]["accuracy"]
  assert row["recipe"] == ours["accuracy"] and row["baseline"] == base["accuracy"]
  # the figures, the generator's per-class FID/KID on the 40 samples, and its model card
  for figure in ("report/per_class_accuracy.png", "report/synthetic_samples.png"):
    assert f"]({figure})" in report and os.path.isfile(os.path.join(augment_run, figure))
  generator = json.load(open(os.path.join(augment_run, "metrics.json")))["generator"]
  assert generator["synthetic"] == 40 and generator["features"] == "classifier:baseline"
  assert set(generator["per_class"]) == {"all", *map(str, range(10))}
  assert all(row["fid"] >= 0 for row in generator["per_class"].values())
  assert "## Generator quality" in report and "| 9 | " in report
  card = json.load(open(os.path.join(augment_run, "generator", "model_card.json")))
  assert sum(card["train_counts"]["per_class"].values()) == card["train_counts"]["total"]
  assert os.path.isfile(os.path.join(augment_run, "generator", card["sample_grid"]))


def test_reused_generator_and_baseline_are_never_written(augment_run, tmp_path):
  config = synthesis.get_config("augment_tiny")
  config.recipe.generator_workdir = os.path.join(augment_run, "generator")
  config.recipe.baseline_workdir = os.path.join(augment_run, "baseline")
  stamp = lambda d: sorted((r, f, os.stat(os.path.join(r, f)).st_mtime_ns)
                           for r, _, fs in os.walk(d) for f in fs)
  before = {d: stamp(d) for d in (config.recipe.generator_workdir,
                                  config.recipe.baseline_workdir)}
  recipe(config, str(tmp_path / "reuse"))
  assert {d: stamp(d) for d in before} == before
  assert not os.path.exists(tmp_path / "reuse" / "generator")
  assert table(str(tmp_path / "reuse"))[1:] == table(augment_run)[1:]


def test_pinned_generator_seed_serves_other_seeds_and_sweeps(augment_run):
  """generator.seed pins the generator's identity; sample.* keys and the recipe's seed do not
  enter it, and the sweep draws with the recipe's seed (bench/synthesis_recipes.py relies on
  this to share one generator per data set)."""
  from jaxsynth.recipes import synthesis as synthesis_recipe
  from jaxsynth.recipes.pipeline import GENERATOR_FREE_KEYS, check_reused_run
  generator = os.path.join(augment_run, "generator")
  config = synthesis.get_config("augment_tiny")
  config.seed, config.generator.seed = 7, 0   # augment_run trained its generator with seed 0
  config.generator.sample.num_steps = 3
  config.generator.sample.cfg_scale = 0.0
  gen = synthesis_recipe.generator_config(config)
  assert gen.seed == 0
  check_reused_run(generator, gen, "recipe.generator_workdir", GENERATOR_FREE_KEYS)
  assert synthesis_recipe.sample_config(config, generator).seed == 7
  config.generator.seed = -1                  # unpinned: the recipe's seed 7, another generator
  with pytest.raises(ConfigError, match="seed: 0 -> 7"):
    check_reused_run(generator, synthesis_recipe.generator_config(config),
                     "recipe.generator_workdir", GENERATOR_FREE_KEYS)


def test_reused_generator_of_other_data_is_refused(augment_run, tmp_path):
  config = synthesis.get_config("augment_tiny")
  config.data.imbalance_ratio = 5.0
  config.recipe.generator_workdir = os.path.join(augment_run, "generator")
  with pytest.raises(ConfigError, match="recipe.generator_workdir.*data.imbalance_ratio"):
    recipe(config, str(tmp_path / "other"))


def test_removed_later_stages_are_redone_and_give_the_same_metrics(augment_run, tmp_path):
  """A run interrupted after each stage (later stages' outputs absent) finishes identically.
  It edits the module's run in place, so it comes last."""
  del tmp_path
  expected = table(augment_run)
  workdir = augment_run
  for removed in (("augmented",), ("sample", "augmented"), ("baseline", "augmented")):
    for name in removed + ("metrics.json", "report.md"):
      path = os.path.join(workdir, name)
      shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
    before = {s: os.stat(os.path.join(workdir, s, "metrics.json")).st_mtime_ns
              for s in ("generator", "sample", "baseline", "augmented") if s not in removed}
    recipe(synthesis.get_config("augment_tiny"), workdir)
    after = {s: os.stat(os.path.join(workdir, s, "metrics.json")).st_mtime_ns for s in before}
    assert after == before  # finished stages were skipped
    assert table(workdir)[1:] == expected[1:]


def test_bad_generator_key_is_refused_before_any_stage_runs(tmp_path):
  config = synthesis.get_config("augment_tiny")
  config.generator.diffusion.prediction = "noise"
  with pytest.raises(ConfigError, match="stage generator of recipe augment.*diffusion.prediction"):
    recipe(config, str(tmp_path / "bad"))
  assert not os.path.exists(tmp_path / "bad")
