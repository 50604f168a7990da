"""Training infrastructure: resume is bit-identical, NaN guard, run-directory rules, outputs."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsynth.errors import CheckpointError, TrainingError
from jaxsynth.tasks import classifier
from jaxsynth.training.loop import Preempted, StopRequest
from tests.helpers import assert_trees_equal, checkpoint_steps, load_params, tiny_config


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("full"))
  config = tiny_config(steps=8, train__checkpoint_every=2)
  results = classifier.train_and_evaluate(config, workdir)
  return workdir, results


def test_run_writes_the_contract_files(uninterrupted):
  workdir, results = uninterrupted
  for name in ("config.json", "log.jsonl", "metrics.json", "predictions.npz"):
    assert os.path.exists(os.path.join(workdir, name)), name
  with open(os.path.join(workdir, "metrics.json")) as f:
    metrics = json.load(f)
  assert metrics == json.loads(json.dumps(results))
  for split in ("val", "test"):
    for key in ("accuracy", "balanced_accuracy", "macro_f1", "mcc", "auc", "per_class_accuracy",
                "confusion_matrix"):
      assert key in metrics[split]
    assert 0.0 <= metrics[split]["balanced_accuracy"] <= 1.0
  predictions = np.load(os.path.join(workdir, "predictions.npz"))
  assert predictions["test_probs"].shape == (metrics["test"]["num_samples"], 10)
  np.testing.assert_allclose(predictions["test_probs"].sum(1), 1.0, rtol=1e-5)
  lines = [json.loads(line) for line in open(os.path.join(workdir, "log.jsonl"))]
  assert [l["step"] for l in lines if "train/loss" in l] == list(range(1, 9))
  assert any("val/balanced_accuracy" in l for l in lines)


def test_interrupted_run_resumes_bit_identically(uninterrupted, tmp_path):
  full_dir, _ = uninterrupted
  workdir = str(tmp_path / "resumed")
  config = tiny_config(steps=8, train__checkpoint_every=2)
  with pytest.raises(Preempted):
    classifier.train_and_evaluate(config, workdir, stop=StopRequest(at_step=3))
  assert checkpoint_steps(workdir)[-1] == 3
  assert not os.path.exists(os.path.join(workdir, "metrics.json"))
  classifier.train_and_evaluate(config, workdir)
  assert_trees_equal(load_params(workdir, 8), load_params(full_dir, 8))
  with open(os.path.join(workdir, "metrics.json")) as a, \
       open(os.path.join(full_dir, "metrics.json")) as b:
    assert json.load(a) == json.load(b)


def test_finished_run_is_not_overwritten_without_flag(uninterrupted):
  workdir, results = uninterrupted
  before = open(os.path.join(workdir, "metrics.json")).read()
  # The same command again is a no-op returning the results; another config is refused.
  again = classifier.train_and_evaluate(tiny_config(steps=8, train__checkpoint_every=2), workdir)
  assert again == json.loads(json.dumps(results))
  with pytest.raises(CheckpointError, match="--overwrite"):
    classifier.train_and_evaluate(tiny_config(steps=9, train__checkpoint_every=2), workdir)
  assert open(os.path.join(workdir, "metrics.json")).read() == before


def test_unfinished_run_with_another_config_is_refused(tmp_path):
  workdir = str(tmp_path)
  with pytest.raises(Preempted):
    classifier.train_and_evaluate(tiny_config(), workdir, stop=StopRequest(at_step=1))
  with pytest.raises(CheckpointError, match="train.learning_rate"):
    classifier.train_and_evaluate(tiny_config(train__learning_rate=0.5), workdir)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
  workdir = str(tmp_path)
  config = tiny_config(steps=12, train__learning_rate=1e30, train__optimizer="sgd",
                       train__checkpoint_every=1, train__log_every=1)
  with pytest.raises(TrainingError, match="NaN/Inf") as info:
    classifier.train_and_evaluate(config, workdir)
  steps = checkpoint_steps(workdir)
  assert f"step {steps[-1]}" in str(info.value)
  saved = load_params(workdir, steps[-1])
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(saved["params"]))
  assert not os.path.exists(os.path.join(workdir, "metrics.json"))


def test_evaluate_task_reproduces_training_metrics(uninterrupted, tmp_path):
  run_dir, results = uninterrupted
  config = tiny_config(steps=8, train__checkpoint_every=2)
  config.task = "evaluate"
  config.evaluate.run_dir = run_dir
  evaluated = classifier.evaluate(config, str(tmp_path))
  assert evaluated["test"] == results["test"]
  stored = np.load(os.path.join(tmp_path, "predictions.npz"))
  assert set(stored.files) == {"val_labels", "val_probs", "test_labels", "test_probs"}


def test_ema_warms_up_so_a_short_run_forgets_its_init():
  """EMA decay min(decay, (1 + t) / (10 + t)): after 1,000 steps toward fixed weights the
  average holds none of the init (a fixed 0.999 would keep 0.999^1000 = 37% of it)."""
  from jaxsynth.training import train_state
  assert float(train_state.ema_decay_at(0.999, 0)) == pytest.approx(0.1)
  assert float(train_state.ema_decay_at(0.999, 20_000)) == pytest.approx(0.999)
  ema, target = {"w": jnp.zeros((3,))}, {"w": jnp.ones((3,))}
  step = jax.jit(lambda e, t: train_state.ema_update(e, target, 0.999, t))
  for t in range(1000):
    ema = step(ema, t)
  assert float(jnp.min(ema["w"])) > 0.999
  assert train_state.ema_update(ema, target, 0.0, 5) is target   # decay 0 copies the params
