"""Class-aware index orders: empirical class frequencies match their targets, determinism."""

import numpy as np
import pytest

from jaxsynth.config import base_config
from jaxsynth.data import pipeline
from jaxsynth.errors import ConfigError
from jaxsynth.recipes import samplers
from jaxsynth.recipes import classifier as classifier_lib
from jaxsynth.tasks import classifier
from tests.conftest import ArraySource
from tests.helpers import tiny_config

COUNTS = np.array([500, 100, 20, 5])
LABELS = np.random.default_rng(0).permutation(np.repeat(np.arange(4), COUNTS))
DRAWS = 20_000
TOL = 0.015  # > 4 standard deviations of a frequency estimated from 20k draws


def frequencies(order, start=0, stop=DRAWS, labels=LABELS):
  indices = np.array([order(g) for g in range(start, stop)])
  return np.bincount(labels[indices], minlength=len(COUNTS)) / len(indices)


def test_instance_order_is_the_epoch_permutation():
  order = samplers.instance_order(LABELS, seed=3)
  assert isinstance(order, pipeline.EpochShuffle)
  epoch = [order(g) for g in range(len(LABELS), 2 * len(LABELS))]
  assert sorted(epoch) == list(range(len(LABELS)))
  np.testing.assert_allclose(frequencies(order, 0, 4 * len(LABELS)), COUNTS / COUNTS.sum())


@pytest.mark.parametrize("make, target", [
    (lambda: samplers.class_balanced_order(LABELS, 4, 0, 640), np.full(4, 0.25)),
    (lambda: samplers.sqrt_order(LABELS, 4, 0, 640), np.sqrt(COUNTS) / np.sqrt(COUNTS).sum()),
    (lambda: samplers.weighted_order(LABELS, 4, 0, 640, 0.25), COUNTS**0.25 / (COUNTS**0.25).sum()),
    (lambda: samplers.weighted_order(LABELS, 4, 0, 640, 1.0), COUNTS / COUNTS.sum()),
    (lambda: samplers.weighted_order(LABELS, 4, 0, 640, 0.0), np.full(4, 0.25)),
])
def test_class_frequencies_match_the_target(make, target):
  order = make()
  np.testing.assert_allclose(order.class_probabilities(0), target, rtol=1e-12)
  np.testing.assert_allclose(frequencies(order), target, atol=TOL)


def test_samples_within_a_class_cycle_through_the_class():
  order = samplers.class_balanced_order(LABELS, 4, seed=1, positions_per_epoch=4000)
  drawn = order.indices(0)
  rare = np.flatnonzero(LABELS == 3)
  hits = np.array([np.sum(drawn == i) for i in rare])
  k = np.sum(LABELS[drawn] == 3)
  assert set(hits) <= {k // len(rare), -(-k // len(rare))}


def test_progressive_schedule_interpolates():
  instance, balanced = COUNTS / COUNTS.sum(), np.full(4, 0.25)
  for t, frac in [(0, 0.0), (5, 0.5), (9, 0.9), (10, 1.0)]:
    np.testing.assert_allclose(samplers.progressive_probabilities(COUNTS, t, 10),
                               (1 - frac) * instance + frac * balanced, rtol=1e-12)
  order = samplers.progressive_order(LABELS, 4, seed=0, positions_per_epoch=DRAWS,
                                     total_epochs=10)
  for t, frac in [(0, 0.0), (5, 0.5), (9, 0.9)]:  # start, middle and last epoch
    target = (1 - frac) * instance + frac * balanced
    np.testing.assert_allclose(order.class_probabilities(t), target, rtol=1e-12)
    np.testing.assert_allclose(frequencies(order, t * DRAWS, (t + 1) * DRAWS), target, atol=TOL)


def test_same_seed_same_indices_other_seed_other_indices():
  def draw(seed, kind):
    config = base_config("train_classifier")
    config.seed, config.recipe.name, config.train.batch_size = seed, kind, 32
    order = samplers.make_index_order(config, LABELS, 4, steps_per_epoch=20, total_steps=100)
    return np.array([order(g) for g in range(0, 3000, 7)])

  for kind in ("class_balanced_sampler", "progressive_sampler", "weighted_ce_sampler", "ce"):
    np.testing.assert_array_equal(draw(5, kind), draw(5, kind))
    assert np.mean(draw(5, kind) != draw(6, kind)) > 0.5


def test_a_position_does_not_depend_on_what_was_drawn_before():
  a = samplers.sqrt_order(LABELS, 4, seed=2, positions_per_epoch=640)
  b = samplers.sqrt_order(LABELS, 4, seed=2, positions_per_epoch=640)
  late = [a(g) for g in range(5000, 5100)]
  assert [b(g) for g in range(0, 5100)][5000:] == late


def test_make_index_order_follows_the_recipe():
  config = base_config("train_classifier")
  config.train.batch_size = 16
  for name, q in [("class_balanced_sampler", 0.0), ("sqrt_sampler", 0.5),
                  ("weighted_sampler", 0.0), ("weighted_ce_sampler", 0.0)]:
    config.recipe.name = name
    order = samplers.make_index_order(config, LABELS, 4, steps_per_epoch=40, total_steps=400)
    assert order.positions_per_epoch == 640
    np.testing.assert_allclose(order.class_probabilities(3),
                               samplers.class_probabilities(COUNTS, q))
  config.recipe.name, config.recipe.sampler_q = "weighted_sampler", 0.5
  order = samplers.make_index_order(config, LABELS, 4, 40, 400)
  np.testing.assert_allclose(order.class_probabilities(0), samplers.class_probabilities(COUNTS, .5))
  config.recipe.name = "progressive_sampler"
  order = samplers.make_index_order(config, LABELS, 4, steps_per_epoch=40, total_steps=400)
  np.testing.assert_allclose(order.class_probabilities(5),
                             samplers.progressive_probabilities(COUNTS, 5, 10))
  for name in ("ce", "focal", "weighted_ce"):
    config.recipe.name = name
    assert isinstance(samplers.make_index_order(config, LABELS, 4, 40, 400), pipeline.EpochShuffle)
  config.recipe.name, config.recipe.sampler_q = "weighted_sampler", float("nan")
  with pytest.raises(ConfigError, match="recipe.sampler_q"):
    samplers.make_index_order(config, LABELS, 4, 40, 400)


def test_absent_class_is_never_drawn():
  labels = np.array([0, 0, 0, 2, 2, 0])
  order = samplers.class_balanced_order(labels, 3, seed=0, positions_per_epoch=100)
  np.testing.assert_allclose(order.class_probabilities(0), [0.5, 0.0, 0.5])
  assert set(labels[order.indices(0)]) == {0, 2}


def test_order_drives_the_grain_pipeline():
  images = np.repeat(np.arange(len(LABELS))[:, None, None, None] % 256, 4, axis=1)
  images = np.repeat(images, 4, axis=2).astype(np.uint8)
  source = ArraySource(images, LABELS, 4)
  config = base_config("train_classifier")
  config.data.threads = 2
  order = samplers.class_balanced_order(LABELS, 4, seed=0, positions_per_epoch=640)
  dataset = pipeline.train_dataset(source, config.data, global_batch=64, seed=0, start_step=0,
                                   num_steps=10, index_order=order)
  labels = np.concatenate([batch["label"] for batch in dataset])
  np.testing.assert_array_equal(labels, LABELS[order.indices(0)])


def test_training_with_a_sampler_recipe_sees_balanced_batches(tmp_path, monkeypatch):
  drawn = []

  def spy(config, labels, *args):
    order = samplers.make_index_order(config, labels, *args)

    def record(g):
      index = order(g)
      drawn.append((g, int(labels[index])))
      return index

    return record

  monkeypatch.setattr(classifier_lib, "make_index_order", spy)
  config = tiny_config(steps=12, recipe__name="class_balanced_sampler")
  results = classifier.train_and_evaluate(config, str(tmp_path))
  assert "balanced_accuracy" in results["test"]
  positions, labels = map(np.array, zip(*sorted(drawn)))
  np.testing.assert_array_equal(positions, np.arange(12 * 16))
  train_counts = np.bincount(classifier_lib.build_setup(config).train.labels, minlength=10)
  rare = np.argsort(train_counts)[:5]
  instance_share = train_counts[rare].sum() / train_counts.sum()
  balanced_share = np.isin(labels, rare).mean()
  # 192 draws: a class-balanced sampler gives the five rarest classes half of them (sd 0.036).
  assert instance_share < 0.3
  assert balanced_share > 0.38
