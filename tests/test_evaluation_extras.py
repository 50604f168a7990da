"""Evaluation extras: operating thresholds, bootstrap intervals, selection metrics, report files."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from PIL import Image

from jaxsynth.errors import ConfigError
from jaxsynth.metrics import report
from jaxsynth.metrics.classification import classification_metrics
from jaxsynth.tasks import classifier
from jaxsynth.training import train_state
from jaxsynth.training.checkpoint import Checkpointer
from jaxsynth.training.loop import LoopSettings, train_loop
from jaxsynth.training.writers import MetricWriter
from tests.helpers import tiny_config

# A hand-made validation split: p(positive) and labels, 4 positives and 10 negatives.
SCORES = np.array([.95, .9, .85, .8, .75, .6, .55, .5, .4, .3, .2, .1, .05, .02])
LABELS = np.array([0, 0, 1, 1, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0])
PROBS = np.stack([1 - SCORES, SCORES], axis=1)


def test_threshold_selection_on_a_hand_made_split():
  # p >= 0.75 keeps 3 of 4 positives and 8 of 10 negatives: sens .75, spec .8, J .55, HM .774.
  # p >= 0.5 keeps all positives and 6 negatives: sens 1, spec .6, J .6, HM .75. No other cut
  # beats these, so Youden picks the second and the harmonic mean the first; each threshold
  # lies halfway to the next lower score (0.6 and 0.4).
  assert report.select_threshold(LABELS, PROBS, "youden") == pytest.approx(0.45)
  assert report.select_threshold(LABELS, PROBS, "max_harmonic_mean") == pytest.approx(0.675)
  assert report.select_threshold(LABELS, PROBS, "argmax") is None
  m = classification_metrics(LABELS, PROBS, 2, threshold=0.675)
  assert (m["sensitivity"], m["specificity"]) == (0.75, 0.8)
  m = classification_metrics(LABELS, PROBS, 2, threshold=0.45)
  assert (m["sensitivity"], m["specificity"]) == (1.0, 0.6)
  # Positive class 0: the scores are column 0; every cut of 1 - p mirrors one of p.
  flipped = report.select_threshold(1 - LABELS, PROBS[:, ::-1], "youden", positive_class=0)
  assert flipped == pytest.approx(0.45)
  # One class only: no operating point to choose, argmax.
  assert report.select_threshold(np.zeros(4, int), PROBS[:4], "youden") is None
  with pytest.raises(ConfigError, match="evaluate.threshold"):
    report.select_threshold(LABELS, PROBS, "f1")


def test_ties_go_to_the_threshold_nearest_one_half():
  # Perfectly separated: every cut between the classes is optimal; 0.5 lies among them.
  scores = np.array([0.1, 0.2, 0.9, 0.95])
  probs = np.stack([1 - scores, scores], 1)
  assert report.select_threshold([0, 0, 1, 1], probs, "youden") == pytest.approx(0.55)


def test_bootstrap_contains_the_estimate_and_is_seeded():
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 3, 300)
  logits = rng.normal(size=(300, 3)) + 1.5 * np.eye(3)[labels]
  probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
  point = classification_metrics(labels, probs, 3)
  ci = report.bootstrap_intervals(labels, probs, 3, 200, seed=7)
  assert set(ci) == set(report.SCALAR_METRICS)
  for name, (lo, hi) in ci.items():
    assert lo <= point[name] <= hi, name
    assert hi - lo < 0.3
  assert report.bootstrap_intervals(labels, probs, 3, 200, seed=7) == ci
  assert report.bootstrap_intervals(labels, probs, 3, 200, seed=8) != ci
  binary = report.bootstrap_intervals(LABELS, PROBS, 2, 100, seed=0, threshold=0.675)
  assert set(binary) == set(report.SCALAR_METRICS + report.BINARY_METRICS)


def test_select_metric_names_are_checked():
  report.check_select_metric("auc", 10)
  report.check_select_metric("harmonic_mean", 2)
  with pytest.raises(ConfigError, match="needs two classes"):
    report.check_select_metric("harmonic_mean", 10)
  with pytest.raises(ConfigError, match="train.select_metric"):
    report.check_select_metric("f1", 2)


def test_undefined_auc_is_never_the_best(tmp_path):
  state = train_state.create({"w": jnp.zeros(2)}, {}, optax.sgd(0.1), jax.random.PRNGKey(0))
  step_fn = lambda s, batch: (s.replace(step=s.step + 1), {"finite": jnp.array(True)})
  values = iter([None, 0.6, None, 0.4])
  settings = LoopSettings(total_steps=4, log_every=1, eval_every=1, checkpoint_every=1,
                          select_metric="auc")
  checkpointer = Checkpointer(str(tmp_path), 4)
  writer = MetricWriter(str(tmp_path))
  try:
    _, meta = train_loop(state, step_fn, iter(lambda: None, 1), settings, checkpointer, writer,
                         lambda s: {"auc": next(values)})
  finally:
    writer.close()
    checkpointer.close()
  assert (meta["best_step"], meta["best_value"]) == (2, 0.6)


@pytest.fixture(scope="module")
def binary_run(tmp_path_factory):
  root = tmp_path_factory.mktemp("binary")
  rng = np.random.default_rng(0)
  arrays = {}
  for split, n in (("train", 64), ("val", 32), ("test", 32)):
    labels = (np.arange(n) % 4 == 0).astype(np.int64)  # 3:1 imbalance
    images = rng.integers(0, 100, (n, 8, 8), dtype=np.uint8) + (120 * labels)[:, None, None]
    arrays[f"{split}_images"], arrays[f"{split}_labels"] = images.astype(np.uint8), labels
  path = str(root / "binary.npz")
  np.savez(path, **arrays)
  config = tiny_config(steps=6, data__source="npz", data__path=path, data__imbalance_ratio=0.0,
                       train__select_metric="auc", evaluate__threshold="max_harmonic_mean",
                       evaluate__bootstrap=50)
  workdir = str(root / "run")
  return config, workdir, classifier.train_and_evaluate(config, workdir)


def test_binary_run_records_threshold_intervals_and_reports(binary_run):
  config, workdir, results = binary_run
  with open(os.path.join(workdir, "metrics.json")) as f:
    assert json.load(f) == json.loads(json.dumps(results))
  stored = np.load(os.path.join(workdir, "predictions.npz"))
  t = report.select_threshold(stored["val_labels"], stored["val_probs"], "max_harmonic_mean")
  assert results["val"]["threshold"] == results["test"]["threshold"] == t
  assert results["evaluation"]["threshold_method"] == "max_harmonic_mean"
  for split in ("val", "test"):
    expected = classification_metrics(stored[f"{split}_labels"], stored[f"{split}_probs"], 2,
                                      threshold=t)
    assert results[split]["harmonic_mean"] == expected["harmonic_mean"]
    for name, interval in results[split]["ci95"].items():
      if interval is not None:
        assert interval[0] <= interval[1]
  lines = [json.loads(l) for l in open(os.path.join(workdir, "log.jsonl"))]
  aucs = {l["step"]: l["val/auc"] for l in lines if "val/auc" in l}
  assert results["checkpoint"]["step"] == max(aucs, key=lambda s: (aucs[s], -s))
  text = open(os.path.join(workdir, "metrics.md")).read()
  assert "| harmonic_mean |" in text and "max_harmonic_mean" in text and "bootstrap" in text
  with Image.open(os.path.join(workdir, "evaluation.png")) as image:
    image.load()
    assert image.format == "PNG" and image.size[1] > 100
  assert not [n for n in os.listdir(workdir) if n.startswith(".tmp")]


def test_threshold_is_chosen_on_val_when_only_test_is_evaluated(binary_run, tmp_path):
  config, workdir, results = binary_run
  config = config.copy_and_resolve_references()
  config.task, config.evaluate.run_dir, config.evaluate.splits = "evaluate", workdir, ("test",)
  evaluated = classifier.evaluate(config, str(tmp_path))
  assert evaluated["test"]["threshold"] == results["test"]["threshold"]
  assert evaluated["test"]["ci95"] == results["test"]["ci95"]
  assert set(np.load(os.path.join(tmp_path, "predictions.npz")).files) == {
      "test_labels", "test_probs"}
  assert "val" not in evaluated
