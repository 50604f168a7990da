"""Each recipe loss equals its formula computed by hand in numpy on hand-made inputs."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import recipes
from jaxsynth.config import base_config
from jaxsynth.errors import ConfigError
from jaxsynth.recipes import losses
from jaxsynth.recipes import classifier as classifier_lib
from jaxsynth.tasks import classifier
from tests.helpers import load_params, tiny_config

LOGITS = np.array([[2.0, -1.0, 0.5],
                   [0.1, 0.2, 3.0],
                   [-2.0, 4.0, 1.0],
                   [1.0, 1.0, 1.0],
                   [0.0, -3.0, 5.0]])
LABELS = np.array([0, 2, 0, 1, 1])
COUNTS = np.array([100, 10, 1])


def config_of(name, **recipe):
  config = base_config("train_classifier")
  config.recipe.name = name
  for key, value in recipe.items():
    config.recipe[key] = value
  return config


def log_softmax(z):
  z = z - z.max(1, keepdims=True)
  return z - np.log(np.exp(z).sum(1, keepdims=True))


def ce_per_sample(logits, labels):
  return -log_softmax(logits)[np.arange(len(labels)), labels]


def loss_of(config, logits=LOGITS, labels=LABELS, counts=COUNTS, num_classes=3):
  fn = losses.make_loss(config, counts, num_classes)
  return float(jax.jit(fn)(jnp.asarray(logits, jnp.float32), jnp.asarray(labels, jnp.int32)))


def test_ce_and_label_smoothing():
  assert loss_of(config_of("ce")) == pytest.approx(ce_per_sample(LOGITS, LABELS).mean(), rel=1e-5)
  config = config_of("ce")
  config.train.label_smoothing = 0.3
  targets = np.full((5, 3), 0.3 / 3) + 0.7 * np.eye(3)[LABELS]
  expected = -(targets * log_softmax(LOGITS)).sum(1).mean()
  assert loss_of(config) == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("kind, raw", [
    ("inverse", 1 / COUNTS),
    ("sqrt_inverse", 1 / np.sqrt(COUNTS)),
    ("effective", (1 - 0.99) / (1 - 0.99 ** COUNTS)),
])
def test_class_weights_formula_and_normalisation(kind, raw):
  weights = losses.class_weights(kind, COUNTS, beta=0.99)
  np.testing.assert_allclose(weights, raw * 3 / raw.sum(), rtol=1e-12)
  assert weights.sum() == pytest.approx(3.0)
  assert weights[2] > weights[1] > weights[0]


def test_effective_weights_limits():
  # beta -> 0: every class has effective number 1, so the weights become uniform.
  np.testing.assert_allclose(losses.class_weights("effective", COUNTS, beta=1e-9), 1.0,
                             rtol=1e-6)
  np.testing.assert_allclose(losses.class_weights("effective", COUNTS, beta=0.0), 1.0)
  # beta -> 1: effective number -> n, the weights approach inverse frequency.
  np.testing.assert_allclose(losses.class_weights("effective", COUNTS, beta=1 - 1e-9),
                             losses.class_weights("inverse", COUNTS), rtol=1e-4)


def test_absent_class_gets_zero_weight():
  weights = losses.class_weights("inverse", [4, 0, 1])
  np.testing.assert_allclose(weights, np.array([0.25, 0.0, 1.0]) * 3 / 1.25)


@pytest.mark.parametrize("kind", ["inverse", "sqrt_inverse", "effective"])
def test_weighted_ce(kind):
  config = config_of("weighted_ce", class_weights=kind, beta=0.9)
  w = losses.class_weights(kind, COUNTS, beta=0.9)
  expected = (w[LABELS] * ce_per_sample(LOGITS, LABELS)).mean()
  assert loss_of(config) == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("gamma", [0.5, 2.0])
def test_focal(gamma):
  p_y = np.exp(-ce_per_sample(LOGITS, LABELS))
  expected = (-(1 - p_y) ** gamma * np.log(p_y)).mean()
  assert loss_of(config_of("focal", gamma=gamma)) == pytest.approx(expected, rel=1e-5)


def test_focal_with_gamma_zero_is_ce():
  assert loss_of(config_of("focal", gamma=0.0)) == pytest.approx(loss_of(config_of("ce")),
                                                                 rel=1e-6)


def test_cb_focal():
  beta, gamma = 0.999, 1.0
  raw = (1 - beta) / (1 - beta ** COUNTS)
  w = raw * 3 / raw.sum()
  p_y = np.exp(-ce_per_sample(LOGITS, LABELS))
  expected = (-w[LABELS] * (1 - p_y) ** gamma * np.log(p_y)).mean()
  assert loss_of(config_of("cb_focal", beta=beta, gamma=gamma)) == pytest.approx(expected,
                                                                                 rel=1e-5)


def test_focal_gradient_is_finite_when_confident():
  fn = losses.make_loss(config_of("focal", gamma=0.5), COUNTS, 3)
  logits = jnp.array([[200.0, 0.0, 0.0]])
  grad = jax.grad(fn)(logits, jnp.array([0]))
  assert np.all(np.isfinite(np.asarray(grad)))


def test_bce_is_sigmoid_cross_entropy():
  z = np.array([[1.5], [-0.3], [4.0], [-2.5]])
  y = np.array([1, 0, 0, 1])
  p = 1 / (1 + np.exp(-z[:, 0]))
  expected = -(y * np.log(p) + (1 - y) * np.log(1 - p)).mean()
  assert loss_of(config_of("bce"), z, y, [2, 2], 2) == pytest.approx(expected, rel=1e-5)
  # One logit z is the two-class softmax on logits (0, z): the same loss.
  two = np.concatenate([np.zeros_like(z), z], axis=1)
  assert loss_of(config_of("ce"), two, y, [2, 2], 2) == pytest.approx(expected, rel=1e-5)
  probs = losses.probabilities(config_of("bce"))(jnp.asarray(z, jnp.float32))
  np.testing.assert_allclose(np.asarray(probs), np.stack([1 - p, p], 1), rtol=1e-5)


def test_bce_needs_two_classes():
  assert losses.num_outputs(config_of("bce"), 2) == 1
  assert losses.num_outputs(config_of("ce"), 2) == 2
  with pytest.raises(ConfigError, match="needs 2 classes"):
    losses.num_outputs(config_of("bce"), 3)
  with pytest.raises(ConfigError, match="needs 2 classes"):
    losses.make_loss(config_of("bce"), COUNTS, 3)


def test_sampler_recipes_use_ce_or_weighted_ce():
  ce = loss_of(config_of("ce"))
  for name in ("class_balanced_sampler", "sqrt_sampler", "progressive_sampler",
               "weighted_sampler"):
    assert loss_of(config_of(name)) == pytest.approx(ce, rel=1e-6)
  assert loss_of(config_of("weighted_ce_sampler")) == pytest.approx(
      loss_of(config_of("weighted_ce")), rel=1e-6)


def test_bad_options_are_config_errors():
  with pytest.raises(ConfigError, match="recipe.name"):
    losses.make_loss(config_of("nope"), COUNTS, 3)
  with pytest.raises(ConfigError, match="recipe.class_weights"):
    losses.make_loss(config_of("weighted_ce", class_weights="log"), COUNTS, 3)
  with pytest.raises(ConfigError, match="recipe.beta"):
    losses.make_loss(config_of("cb_focal", beta=1.0), COUNTS, 3)
  with pytest.raises(ConfigError, match="recipe.gamma"):
    losses.make_loss(config_of("focal", gamma=-1.0), COUNTS, 3)
  config = config_of("focal")
  config.train.label_smoothing = 0.1
  with pytest.raises(ConfigError, match="label_smoothing"):
    losses.make_loss(config, COUNTS, 3)


def test_every_loss_recipe_has_a_config_variant():
  for name in losses.LOSSES:
    assert recipes.get_config(name).recipe.name == name
  assert recipes.get_config("label_smoothing").train.label_smoothing == 0.1
  assert recipes.get_config("focal,npz").data.source == "npz"
  with pytest.raises(ConfigError, match="unknown value 'crt_typo'"):
    classifier_lib.build_setup(recipes.get_config("crt_typo"))


def test_bce_run_has_one_logit_and_two_class_probabilities(tmp_path):
  rng = np.random.default_rng(0)
  arrays = {}
  for split, n in (("train", 64), ("val", 16), ("test", 16)):
    labels = (np.arange(n) % 4 == 0).astype(np.int64)  # 3:1 imbalance
    images = rng.integers(0, 100, (n, 8, 8), dtype=np.uint8) + (120 * labels)[:, None, None]
    arrays[f"{split}_images"], arrays[f"{split}_labels"] = images.astype(np.uint8), labels
  path = str(tmp_path / "binary.npz")
  np.savez(path, **arrays)
  config = tiny_config(steps=6, recipe__name="bce", data__source="npz", data__path=path,
                       data__imbalance_ratio=0.0)
  workdir = str(tmp_path / "run")
  results = classifier.train_and_evaluate(config, workdir)
  head = load_params(workdir)["params"]["head"]["kernel"]
  assert head.shape[-1] == 1
  stored = np.load(os.path.join(workdir, "predictions.npz"))
  assert stored["test_probs"].shape == (16, 2)
  np.testing.assert_allclose(stored["test_probs"].sum(1), 1.0, rtol=1e-6)
  assert "harmonic_mean" in results["test"]
  lines = [json.loads(line) for line in open(os.path.join(workdir, "log.jsonl"))]
  assert all(0 <= l["train/accuracy"] <= 1 for l in lines if "train/accuracy" in l)
  config.task, config.evaluate.run_dir = "evaluate", workdir
  assert classifier.evaluate(config, str(tmp_path / "eval"))["test"] == results["test"]
  config.recipe.name = "ce"
  with pytest.raises(ConfigError, match="different heads"):
    classifier.evaluate(config, str(tmp_path / "eval2"))


def test_bce_on_ten_classes_fails_before_training(tmp_path):
  with pytest.raises(ConfigError, match="needs 2 classes"):
    classifier_lib.build_setup(tiny_config(recipe__name="bce"))
