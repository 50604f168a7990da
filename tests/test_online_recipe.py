"""Recipe `online` (IOIS Algorithm 1) end to end on the tiny config: per-epoch budgets (eq. 5)
from training predictions only, guided synthesis (eq. 4) from one compiled sampler, replace vs
accumulate pools, and resume (an epoch removed, a stop mid-epoch) with identical metrics."""

import json
import os
import shutil

import numpy as np
import pytest

from configs import synthesis
from jaxsynth.data.sources.synthetic import SyntheticSource
from jaxsynth.errors import ConfigError
from jaxsynth.recipes import classifier as classifier_lib
from jaxsynth.recipes import iois, online
from jaxsynth.tasks.recipe import recipe
from jaxsynth.training.loop import Preempted, StopRequest

EPOCHS, K = 2, 20   # online_tiny's recipe.epochs and recipe.budget


def read(path):
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def epoch_file(workdir, e, name=iois.EPOCH_FILE):
  return os.path.join(workdir, "online", iois.EPOCHS_DIR, f"epoch-{e:03d}", name)


def final(workdir):
  """The online stage's val/test metrics (what a resumed run must reproduce)."""
  metrics = read(os.path.join(workdir, "online", "metrics.json"))
  return {split: metrics[split] for split in ("val", "test")}, metrics["online"]


@pytest.fixture(scope="module")
def online_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("online"))
  recipe(synthesis.get_config("online_tiny"), workdir)
  return workdir


@pytest.fixture(scope="module")
def accumulate_run(online_run, tmp_path_factory):
  """pool=accumulate on the same generator and baseline, with val/test guarded: opening either
  before every epoch is finished fails the run (so budgets cannot come from them)."""
  workdir = str(tmp_path_factory.mktemp("accumulate"))
  config = synthesis.get_config("online_tiny")
  config.recipe.pool = "accumulate"
  config.recipe.generator_workdir = os.path.join(online_run, "generator")
  config.recipe.baseline_workdir = os.path.join(online_run, "baseline")
  opened = []
  real_open = classifier_lib.open_source

  def guarded(data_cfg, split, *args, **kwargs):
    if split != "train":
      finished = all(os.path.isfile(epoch_file(workdir, e)) for e in range(1, EPOCHS + 1))
      if not finished:
        raise AssertionError(f"the {split} split was opened before the last epoch finished")
      opened.append(split)
    return real_open(data_cfg, split, *args, **kwargs)

  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(classifier_lib, "open_source", guarded)
    patch.setattr(iois, "open_source", guarded)
    recipe(config, workdir)
  return workdir, opened


def test_online_runs_every_stage_with_eq5_budgets(online_run):
  for stage in ("generator", "baseline", "online"):
    assert os.path.isfile(os.path.join(online_run, stage, "metrics.json")), stage
  assert not os.path.exists(os.path.join(online_run, "sample"))   # synthesis is in the stage
  metrics = read(os.path.join(online_run, "metrics.json"))
  assert metrics["recipe"]["test"]["per_class_accuracy"]
  assert metrics["comparison"]["metrics"]["accuracy"]["recipe"] == \
      metrics["recipe"]["test"]["accuracy"]
  report = open(os.path.join(online_run, "report.md"), encoding="utf-8").read()
  assert "Online synthesis (IOIS Algorithm 1)" in report
  for e in range(1, EPOCHS + 1):
    record = read(epoch_file(online_run, e))
    budgets, acc = np.array(record["budgets"]), np.array(record["train_per_class_accuracy"])
    assert budgets.sum() == K and record["pool_size"] == K
    np.testing.assert_array_equal(budgets, online.aas_budgets(acc, K))   # eq. 5
    assert record["seconds"] > 0 and record["end_step"] - record["start_step"] == record["steps"]
    samples = SyntheticSource(epoch_file(online_run, e, "samples"))
    assert samples.class_counts().tolist() == budgets.tolist()
  # epoch 2's budgets are the classifier's after epoch 1, so training changed them
  assert read(epoch_file(online_run, 1))["train_per_class_accuracy"] != \
      read(epoch_file(online_run, 2))["train_per_class_accuracy"]
  summary = read(os.path.join(online_run, "online", iois.SUMMARY_FILE))
  assert [r["epoch"] for r in summary["epochs"]] == [1, 2]


def test_guided_sampler_compiles_once_across_epochs(online_run):
  """The classifier is traced into the sampler once; epoch 2 (new params) reuses the program."""
  traces = [read(epoch_file(online_run, e, iois.SYNTHESIS_FILE))["sampler_traces"]
            for e in range(1, EPOCHS + 1)]
  assert traces[0] >= 1 and traces == [traces[0]] * EPOCHS, traces


def test_replace_and_accumulate_pool_sizes(online_run, accumulate_run):
  workdir, _ = accumulate_run
  replace = [read(epoch_file(online_run, e))["pool_size"] for e in range(1, EPOCHS + 1)]
  accumulate = [read(epoch_file(workdir, e))["pool_size"] for e in range(1, EPOCHS + 1)]
  assert replace == [K, K] and accumulate == [K, 2 * K]
  assert read(epoch_file(workdir, 2))["pool"] == ["epochs/epoch-001/samples",
                                                  "epochs/epoch-002/samples"]
  assert read(epoch_file(online_run, 2))["pool"] == ["epochs/epoch-002/samples"]
  assert read(os.path.join(workdir, "online", "metrics.json"))["online"]["pool_size"] == [K, 2 * K]
  # the reused generator and baseline gave the same first epoch as the replace run
  assert read(epoch_file(workdir, 1))["budgets"] == read(epoch_file(online_run, 1))["budgets"]


def test_budgets_come_from_training_predictions_only(accumulate_run):
  workdir, opened = accumulate_run
  assert os.path.isfile(os.path.join(workdir, "online", "metrics.json"))
  assert {"val", "test"} <= set(opened)   # read for the final evaluation only


def test_budget_below_the_class_count_is_refused_before_anything_is_written(tmp_path):
  config = synthesis.get_config("online_tiny")
  config.recipe.budget = 5
  with pytest.raises(ConfigError, match="'recipe.budget'.*less than the 10 classes"):
    recipe(config, str(tmp_path / "bad"))
  assert not os.path.exists(tmp_path / "bad")


def test_offline_draws_one_guided_set_from_the_fixed_baseline(online_run, tmp_path):
  """The control: one guided set (AAS budgets from the baseline's training accuracy), then an
  ordinary classifier on real + that set; the online run's generator and baseline are reused."""
  config = synthesis.get_config("offline_tiny")
  config.recipe.generator_workdir = os.path.join(online_run, "generator")
  config.recipe.baseline_workdir = os.path.join(online_run, "baseline")
  workdir = str(tmp_path / "offline")
  recipe(config, workdir)
  guided = SyntheticSource(os.path.join(workdir, "guided"))
  assert len(guided) == config.recipe.budget
  mixture = read(os.path.join(workdir, "offline", "mixture.json"))
  assert mixture["parts"][1]["class_counts"] == guided.class_counts().tolist()
  metrics = read(os.path.join(workdir, "metrics.json"))
  assert metrics["comparison"]["metrics"]["accuracy"]["recipe"] == \
      read(os.path.join(workdir, "offline", "metrics.json"))["test"]["accuracy"]
  assert not os.path.exists(os.path.join(workdir, "generator"))


def test_removed_epoch_and_stop_mid_epoch_resume_to_identical_metrics(online_run):
  """Epoch 2's directory removed, then a stop in the middle of its training; the rerun ends
  with the uninterrupted run's metrics. It edits the module's run in place, so it comes last."""
  expected = final(online_run)
  shutil.rmtree(os.path.dirname(epoch_file(online_run, 2)))
  for name in ("online/metrics.json", "metrics.json", "report.md"):
    os.remove(os.path.join(online_run, name))
  epoch1 = os.stat(epoch_file(online_run, 1)).st_mtime_ns
  start = read(epoch_file(online_run, 1))["end_step"]
  with pytest.raises(Preempted):
    recipe(synthesis.get_config("online_tiny"), online_run, stop=StopRequest(at_step=start + 5))
  assert os.path.isdir(os.path.join(os.path.dirname(epoch_file(online_run, 2)), "checkpoints"))
  assert not os.path.exists(epoch_file(online_run, 2))
  recipe(synthesis.get_config("online_tiny"), online_run)
  assert os.stat(epoch_file(online_run, 1)).st_mtime_ns == epoch1   # epoch 1 was not redone
  assert final(online_run) == expected
