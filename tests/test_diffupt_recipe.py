"""Recipes `pretrain_finetune` and `diffupt` end to end on their tiny configs, and train.init_from.

One pretrain_finetune run (its own generator and baseline) and one diffupt run that reuses them
(recipe.generator_workdir / baseline_workdir) are module-scoped; the other cases only build
pipelines or fail in checks, so nothing else trains.
"""

import json
import os

import jax
import ml_collections
import numpy as np
import pytest

from configs import synthesis
from jaxsynth.errors import CheckpointError, ConfigError
from jaxsynth.recipes import classifier, diffupt
from jaxsynth.recipes import synthesis as synthesis_recipes
from jaxsynth.recipes.pipeline import Stage
from jaxsynth.synthesis.sweep import largest_remainder
from jaxsynth.tasks.recipe import STAGE_TASKS, recipe

RATIO = "1-1-1-1-1-3-3-3-3-3"   # parts per digit class: 3 samples of 0-4, 9 of 5-9
PRETRAIN_SIZE = 60
TASKS = {name: None for name in STAGE_TASKS}  # building a pipeline runs nothing


def read(*path):
  with open(os.path.join(*path), encoding="utf-8") as f:
    return json.load(f)


def tiny(variant, **recipe_keys):
  config = synthesis.get_config(variant)
  config.recipe.update(recipe_keys)
  return config


@pytest.fixture(scope="module")
def pf_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("pretrain_finetune"))
  recipe(tiny("pretrain_finetune_tiny", ratio=RATIO, pretrain_size=PRETRAIN_SIZE), workdir)
  return workdir


@pytest.fixture(scope="module")
def diffupt_run(pf_run, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("diffupt") / "run")
  recipe(tiny("diffupt_tiny", generator_workdir=os.path.join(pf_run, "generator"),
              baseline_workdir=os.path.join(pf_run, "baseline")), workdir)
  return workdir


def test_pretrain_finetune_runs_every_stage_pretraining_on_synthetic_data_only(pf_run):
  for stage in ("generator", "sample", "baseline", "pretrain", "finetune"):
    assert os.path.isfile(os.path.join(pf_run, stage, "metrics.json")), stage
  assert "## Command" in open(os.path.join(pf_run, "report.md"), encoding="utf-8").read()
  metrics = read(pf_run, "metrics.json")
  assert metrics["recipe"]["test"] == read(pf_run, "finetune", "metrics.json")["test"]
  assert metrics["baseline"]["test"] == read(pf_run, "baseline", "metrics.json")["test"]
  # the pretraining set: the sweep alone, split by recipe.ratio with the largest remainder
  expected = largest_remainder(PRETRAIN_SIZE, [int(p) for p in RATIO.split("-")]).tolist()
  assert expected == [3] * 5 + [9] * 5
  mixture = read(pf_run, "pretrain", "mixture.json")
  assert mixture["mix"] == "only" and len(mixture["parts"]) == 1
  assert mixture["parts"][0]["source"] == os.path.join(pf_run, "sample", "samples")
  assert mixture["class_counts"] == expected
  assert read(pf_run, "sample", "config.json")["sample"]["class_counts"] == expected
  pretrain, finetune = (read(pf_run, s, "config.json") for s in ("pretrain", "finetune"))
  assert pretrain["train"]["learning_rate"] == 1e-4 and finetune["train"]["learning_rate"] == 1e-5
  # val and test stay real: the pretrain stage is evaluated on the baseline's splits
  for split in ("val", "test"):
    labels = [np.load(os.path.join(pf_run, s, "predictions.npz"))[f"{split}_labels"]
              for s in ("baseline", "pretrain")]
    np.testing.assert_array_equal(*labels)
  # the finetune stage trains on the real split alone, from pretrain's chosen checkpoint
  assert not os.path.exists(os.path.join(pf_run, "finetune", "mixture.json"))
  assert finetune["train"]["init_from"] == os.path.join(pf_run, "pretrain")
  chosen = read(pf_run, "pretrain", "metrics.json")["checkpoint"]
  assert read(pf_run, "finetune", "metrics.json")["init_from"] == {
      "dir": os.path.join(pf_run, "pretrain"), **chosen}


def test_finetune_starts_from_the_pretrain_stages_params(pf_run):
  """The finetune plan's step-0 state holds pretrain's chosen params and BatchNorm statistics
  (not a fresh init), with a fresh optimiser."""
  config = synthesis_recipes.classifier_config(synthesis.get_config("pretrain_finetune_tiny"))
  config.train.init_from = os.path.join(pf_run, "pretrain")
  setup = classifier.build_setup(config)
  plan = classifier.plan_training(config, setup)
  chosen = read(pf_run, "pretrain", "metrics.json")["checkpoint"]
  pretrain_config = ml_collections.ConfigDict(read(pf_run, "pretrain", "config.json"))
  params, model_state, step, _ = classifier.run_variables(
      pretrain_config, setup, os.path.join(pf_run, "pretrain"), chosen["which"], chosen["step"])
  assert step == chosen["step"]
  same = lambda a, b: all(jax.tree.leaves(jax.tree.map(np.array_equal, a, b)))
  assert same(plan.state.params, params) and same(plan.state.ema_params, params)
  assert same(plan.state.model_state, model_state)
  assert int(plan.state.step) == 0
  fresh = classifier.plan_training(synthesis_recipes.classifier_config(
      synthesis.get_config("pretrain_finetune_tiny")), setup)
  assert not same(fresh.state.params, params)
  assert same(jax.tree.map(np.asarray, plan.state.opt_state),
              jax.tree.map(np.asarray, fresh.tx.init(params)))


def test_diffupt_filters_the_guided_sweep_with_the_baseline(pf_run, diffupt_run):
  for stage in ("sample", "filter", "pretrain", "finetune"):
    assert os.path.isfile(os.path.join(diffupt_run, stage, "metrics.json")), stage
  for stage in ("generator", "baseline"):   # reused, read only
    assert not os.path.exists(os.path.join(diffupt_run, stage))
  assert os.path.isfile(os.path.join(diffupt_run, "report.md"))
  sample = read(diffupt_run, "sample", "config.json")["sample"]
  assert sample["cfg_scale"] == 3.0 and sample["class_counts"] == [4] * 10  # balanced 40
  f = read(diffupt_run, "filter", "config.json")["filter"]
  assert f["name"] == "classifier" and f["classifier"] == os.path.join(pf_run, "baseline")
  assert f["input"] == os.path.join(diffupt_run, "sample")
  kept = read(diffupt_run, "filter", "metrics.json")["acceptance"]["per_class"]
  mixture = read(diffupt_run, "pretrain", "mixture.json")
  assert mixture["mix"] == "only"
  assert mixture["parts"][0]["source"] == os.path.join(diffupt_run, "filter", "samples")
  assert mixture["class_counts"] == [c["accepted"] for c in kept.values()]
  assert sum(mixture["class_counts"]) > 0
  assert read(diffupt_run, "finetune", "config.json")["train"]["init_from"] == \
      os.path.join(diffupt_run, "pretrain")


def test_diffupt_filter_names_and_none_without_a_filter_stage(tmp_path):
  names = {}
  for choice in diffupt.FILTERS:
    pipe = synthesis_recipes.pipeline(tiny("diffupt_tiny", filter=choice), str(tmp_path), TASKS)
    names[choice] = pipe.stages["filter"].config.filter.name if "filter" in pipe.stages else None
    if choice == "none":
      assert list(pipe.stages) == ["generator", "sample", "baseline", "pretrain", "finetune"]
      assert tuple(pipe.stages["pretrain"].config.data.synthetic.paths) == (
          os.path.join(str(tmp_path), "sample"),)
  assert names == {"none": None, "classifier": "classifier", "realism": "realism",
                   "class_realism": "realism_class"}
  assert not os.listdir(tmp_path)


@pytest.mark.parametrize("ratio, match", [
    ("30-70", r"recipe.ratio' = '30-70' gives 2 parts but the data has 10 classes.*one part"),
    ("30:70", r"recipe.ratio' has bad value '30:70'.*joined by '-'"),
])
def test_bad_ratio_is_refused_before_anything_is_written(tmp_path, ratio, match):
  workdir = tmp_path / "run"
  with pytest.raises(ConfigError, match=match):
    recipe(tiny("pretrain_finetune_tiny", ratio=ratio), str(workdir))
  assert not os.path.exists(workdir)


def test_reused_generator_of_other_classes_is_refused(pf_run, tmp_path):
  arrays = {}
  rng = np.random.default_rng(0)
  for split, n in (("train", 30), ("val", 9), ("test", 9)):
    arrays[f"{split}_images"] = rng.integers(0, 256, (n, 8, 8), dtype=np.uint8)
    arrays[f"{split}_labels"] = (np.arange(n) % 3).astype(np.uint8)
  np.savez(tmp_path / "three.npz", **arrays)
  config = tiny("diffupt_tiny", generator_workdir=os.path.join(pf_run, "generator"))
  config.data.update(source="npz", path=str(tmp_path / "three.npz"), imbalance_ratio=0.0)
  with pytest.raises(ConfigError, match=r"'recipe.generator_workdir'.*with 10 classes.*has 3"):
    recipe(config, str(tmp_path / "run"))
  assert not os.path.exists(tmp_path / "run")


def test_init_from_is_checked_before_anything_is_written(pf_run, tmp_path):
  base = synthesis_recipes.classifier_config(synthesis.get_config("pretrain_finetune_tiny"))
  workdir = str(tmp_path / "run")

  def refused(error, match, init_from, **model):
    config = base.copy_and_resolve_references()
    config.train.init_from = init_from
    config.model.update(model)
    with pytest.raises(error, match=match):
      classifier.train_single(config, workdir)
    assert not os.path.exists(workdir)

  refused(CheckpointError, r"'train.init_from'.*does not exist.*train_classifier run",
          str(tmp_path / "missing"))
  unfinished = tmp_path / "unfinished"
  unfinished.mkdir()
  (unfinished / "config.json").write_text(
      open(os.path.join(pf_run, "pretrain", "config.json"), encoding="utf-8").read())
  refused(CheckpointError, r"'train.init_from'.*unfinished run.*finish it", str(unfinished))
  refused(CheckpointError, r"is a 'train_diffusion' run.*train.init_from",
          os.path.join(pf_run, "generator"))
  refused(ConfigError, r"'train.init_from'.*model.width: 8 -> 16.*same model keys",
          os.path.join(pf_run, "pretrain"), width=16)
  refused(ConfigError, r"'train.init_from' names --workdir .* itself", workdir)
  with pytest.raises(ConfigError, match=r"'train.init_from'.*10 classes.*has 3"):
    config = base.copy_and_resolve_references()
    config.train.init_from = os.path.join(pf_run, "pretrain")
    classifier.check_init_from(config, num_classes=3)


def test_stage_run_order_is_the_recipe(tmp_path):
  pipe = synthesis_recipes.pipeline(tiny("pretrain_finetune_tiny"), str(tmp_path), TASKS)
  assert list(pipe.stages) == ["generator", "sample", "baseline", "pretrain", "finetune"]
  assert all(isinstance(s, Stage) and s.config is not None for s in pipe.stages.values())
  assert synthesis_recipes.RECIPES["pretrain_finetune"].result_stage == "finetune"
  assert synthesis_recipes.RECIPES["diffupt"].result_stage == "finetune"
