"""Decoupled two-stage recipes: what stage 2 may change, tau selection, stage skipping, resume."""

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from configs import recipes
from jaxsynth.errors import ConfigError
from jaxsynth.recipes import decoupled
from jaxsynth.tasks import classifier
from jaxsynth.training.loop import Preempted, StopRequest
from tests.helpers import assert_trees_equal, checkpoint_steps, load_params, tiny_config


def decoupled_config(name, **overrides):
  return tiny_config(steps=3, **{"recipe__name": name, "recipe__stage2_steps": 3, **overrides})


def without_head(params):
  return {k: v for k, v in params.items() if k != "head"}


@pytest.fixture(scope="module")
def crt_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("crt"))
  results = classifier.train_and_evaluate(decoupled_config("crt"), workdir)
  return workdir, results


@pytest.fixture(scope="module")
def ce_run(tmp_path_factory):
  """A finished plain `ce` run with the decoupled runs' stage-1 keys."""
  workdir = str(tmp_path_factory.mktemp("ce"))
  classifier.train_and_evaluate(tiny_config(steps=3), workdir)
  return workdir


def snapshot(directory):
  """{relative path: mtime} of everything under `directory`."""
  return {os.path.relpath(os.path.join(root, name), directory):
          os.stat(os.path.join(root, name)).st_mtime_ns
          for root, dirs, files in os.walk(directory) for name in dirs + files}


def run_on_finished_stage1(crt_dir, workdir, name, **overrides):
  """Runs recipe `name` in `workdir` on a copy of the crt run's finished stage 1."""
  shutil.copytree(os.path.join(crt_dir, "stage1"), os.path.join(workdir, "stage1"))
  return classifier.train_and_evaluate(decoupled_config(name, **overrides), workdir)


def stage1_chosen(workdir):
  steps = checkpoint_steps(os.path.join(workdir, "stage1"), "best")
  return load_params(os.path.join(workdir, "stage1"), steps[-1], "best")


def test_crt_keeps_backbone_and_batch_stats_bit_identical(crt_run):
  workdir, results = crt_run
  before = stage1_chosen(workdir)
  after = load_params(os.path.join(workdir, "stage2"))
  assert int(after["step"]) == 3
  assert set(after["params"]) == {"base"}
  assert_trees_equal(without_head(after["params"]["base"]), without_head(before["params"]))
  assert_trees_equal(after["model_state"]["batch_stats"]["base"],
                     before["model_state"]["batch_stats"])
  # The head was re-initialised (fold_in(root, 2)) and then trained.
  fresh, _ = decoupled.stage2_variables("crt", before["params"], before["model_state"], 0)
  head = after["params"]["base"]["head"]
  assert not np.array_equal(head["kernel"], before["params"]["head"]["kernel"])
  assert not np.array_equal(head["kernel"], np.asarray(fresh["base"]["head"]["kernel"]))
  assert not np.array_equal(head["bias"], np.asarray(fresh["base"]["head"]["bias"]))
  # Outputs: stage 2 metrics and reports at the top, stage 1's own in stage1/.
  for name in ("config.json", "metrics.json", "predictions.npz", "metrics.md",
               "evaluation.png", "stage1/metrics.json", "stage2/log.jsonl"):
    assert os.path.exists(os.path.join(workdir, name)), name
  assert results["stages"]["stage1"]["checkpoint"] == "best"
  with Image.open(os.path.join(workdir, "evaluation.png")) as image:
    assert image.format == "PNG" and image.size[0] > 100


def test_evaluate_task_reproduces_a_decoupled_run(crt_run, tmp_path):
  workdir, results = crt_run
  config = decoupled_config("crt")
  config.task, config.evaluate.run_dir = "evaluate", workdir
  assert classifier.evaluate(config, str(tmp_path / "eval"))["test"] == results["test"]
  config.recipe.name = "lws"
  with pytest.raises(ConfigError, match="decoupled recipes give different models"):
    classifier.evaluate(config, str(tmp_path / "eval2"))


def test_lws_learns_only_the_scales(crt_run, tmp_path):
  workdir = str(tmp_path)
  results = run_on_finished_stage1(crt_run[0], workdir, "lws")
  before = stage1_chosen(workdir)
  after = load_params(os.path.join(workdir, "stage2"))
  assert set(after["params"]) == {"base", "scale"}
  assert_trees_equal(after["params"]["base"], before["params"])  # the head too
  assert_trees_equal(after["model_state"]["batch_stats"]["base"],
                     before["model_state"]["batch_stats"])
  scale = np.asarray(after["params"]["scale"])
  assert scale.shape == (10,) and not np.array_equal(scale, np.ones(10, np.float32))
  assert "test" in results


def test_tau_zero_is_the_stage1_head(crt_run, tmp_path):
  workdir = str(tmp_path)
  results = run_on_finished_stage1(crt_run[0], workdir, "tau_norm", recipe__tau_grid=(0.0,))
  assert results["tau_norm"]["tau"] == 0.0
  ours = np.load(os.path.join(workdir, "predictions.npz"))
  stage1 = np.load(os.path.join(workdir, "stage1", "predictions.npz"))
  for key in ("val_probs", "test_probs"):
    np.testing.assert_array_equal(ours[key], stage1[key])
  head = load_params(os.path.join(workdir, "stage2"), 0, "best")["params"]["head"]
  assert_trees_equal(head, stage1_chosen(workdir)["params"]["head"])
  assert_trees_equal(decoupled.tau_normalise(head, 0.0), head)


def test_tau_is_chosen_on_validation():
  # w_0 = (10, 0) dwarfs w_1 = (0, 1): at tau = 0 the class-1 sample goes to class 0.
  head = {"kernel": jnp.array([[10.0, 0.0], [0.0, 1.0]]), "bias": jnp.zeros(2)}
  features = np.array([[1.0, 0.5], [0.5, 2.0]])
  labels = np.array([0, 1])
  config = recipes.get_config("tau_norm")
  config.recipe.tau_grid = (0.0, 0.5, 1.0)
  tau, scores = decoupled.select_tau(config, features, labels, head, 2)
  assert scores == {0.0: 0.5, 0.5: 1.0, 1.0: 1.0}
  assert tau == 0.5  # ties: the first in the grid
  normed = decoupled.tau_normalise(head, 1.0)
  np.testing.assert_allclose(np.linalg.norm(normed["kernel"], axis=0), 1.0, rtol=1e-6)


def test_multistage_runs_both_stages_and_resumes(crt_run, tmp_path):
  crt_dir = crt_run[0]
  workdir = str(tmp_path)
  shutil.copytree(os.path.join(crt_dir, "stage1"), os.path.join(workdir, "stage1"))
  config = decoupled_config("multistage_sampler", recipe__stage2_learning_rate=1e-4)
  stage1_metrics = os.path.join(workdir, "stage1", "metrics.json")
  stamp = os.stat(stage1_metrics).st_mtime_ns
  with pytest.raises(Preempted):
    classifier.train_and_evaluate(config, workdir, stop=StopRequest(at_step=1))
  assert checkpoint_steps(os.path.join(workdir, "stage2"))[-1] == 1
  assert not os.path.exists(os.path.join(workdir, "metrics.json"))
  results = classifier.train_and_evaluate(config, workdir)
  assert os.stat(stage1_metrics).st_mtime_ns == stamp  # stage 1 skipped
  assert checkpoint_steps(os.path.join(workdir, "stage1")) == checkpoint_steps(
      os.path.join(crt_dir, "stage1"))
  lines = [json.loads(l) for l in open(os.path.join(workdir, "stage2", "log.jsonl"))]
  assert [l["step"] for l in lines if "train/loss" in l] == [1, 2, 3]  # resumed at 1
  rates = [l["train/learning_rate"] for l in lines if "train/loss" in l]
  assert rates[0] == pytest.approx(1e-4)
  # The whole network trained, BatchNorm statistics included.
  before, after = stage1_chosen(workdir), load_params(os.path.join(workdir, "stage2"), 3)
  conv = lambda p: np.asarray(jax.tree.leaves(without_head(p))[0])
  assert not np.array_equal(conv(after["params"]), conv(before["params"]))
  assert not np.array_equal(jax.tree.leaves(after["model_state"])[0],
                            jax.tree.leaves(before["model_state"])[0])
  assert results["stages"]["stage1"]["step"] == before["step"]


def test_recipe_variants_and_bad_options():
  for name in decoupled.RECIPES:
    assert recipes.get_config(name).recipe.name == name
  config = recipes.get_config("multistage_sampler")
  assert config.recipe.stage2_learning_rate == pytest.approx(0.1 * config.train.learning_rate)
  with pytest.raises(ConfigError, match="recipe.stage2_schedule"):
    decoupled.check_options(decoupled_config("crt", recipe__stage2_schedule="step"))
  with pytest.raises(ConfigError, match="recipe.tau_grid"):
    decoupled.check_options(decoupled_config("tau_norm", recipe__tau_grid=()))
  with pytest.raises(ConfigError, match="recipe.stage2_epochs"):
    decoupled.check_options(decoupled_config("lws", recipe__stage2_steps=0,
                                             recipe__stage2_epochs=0.0))


def test_crt_on_an_existing_ce_run_equals_training_stage1(crt_run, ce_run, tmp_path):
  before = snapshot(ce_run)
  workdir = str(tmp_path / "crt")
  config = decoupled_config("crt", recipe__stage1_workdir=ce_run)
  results = classifier.train_and_evaluate(config, workdir)
  assert not os.path.exists(os.path.join(workdir, "stage1"))  # stage 1 not trained
  assert results["stages"]["stage1"]["dir"] == ce_run
  ours = json.load(open(os.path.join(workdir, "metrics.json")))
  theirs = json.load(open(os.path.join(crt_run[0], "metrics.json")))
  assert ours["test"] == theirs["test"] and ours["val"] == theirs["val"]
  assert ours["stages"]["stage1"]["step"] == theirs["stages"]["stage1"]["step"]
  # --overwrite replaces this run only; the stage-1 run is never written to nor removed.
  again = classifier.train_and_evaluate(config, workdir, overwrite=True)
  assert again["test"] == theirs["test"]
  assert snapshot(ce_run) == before


def test_stage1_workdir_must_be_a_matching_finished_ce_run(crt_run, ce_run, tmp_path):
  workdir = str(tmp_path / "run")

  def fails(match, stage1_workdir, **overrides):
    config = decoupled_config("crt", recipe__stage1_workdir=str(stage1_workdir), **overrides)
    with pytest.raises(ConfigError, match=match):
      classifier.train_and_evaluate(config, workdir, overwrite=True)

  for key, value in (("model__width", 16), ("seed", 1), ("train__label_smoothing", 0.1),
                     ("data__imbalance_ratio", 5.0)):
    name = key.replace("__", ".")
    fails(rf"recipe\.stage1_workdir.*{name}: ", ce_run, **{key: value})
  unfinished = tmp_path / "unfinished"
  unfinished.mkdir()
  shutil.copy(os.path.join(ce_run, "config.json"), unfinished)
  fails(r"recipe\.stage1_workdir.*no metrics\.json", unfinished)
  empty = tmp_path / "empty"
  empty.mkdir()
  fails(r"recipe\.stage1_workdir.*no metrics\.json", empty)
  shutil.copy(os.path.join(ce_run, "metrics.json"), empty)
  fails(r"recipe\.stage1_workdir.*no config\.json", empty)
  fails(r"give its stage-1 directory", crt_run[0])
  fails(r"contain one another", os.path.join(workdir, "stage1"))
  focal = tmp_path / "focal"
  shutil.copytree(ce_run, focal)
  trained = json.load(open(focal / "config.json"))
  trained["recipe"]["name"] = "focal"
  (focal / "config.json").write_text(json.dumps(trained))
  fails(r"holds a 'focal' run", focal)
  assert not os.path.exists(workdir)  # checked before anything is written
