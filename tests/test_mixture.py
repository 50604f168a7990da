"""Real + synthetic training data: counts, per-batch fractions, samplers on the mixture, errors."""

import json
import os

import numpy as np
import pytest

from jaxsynth.data import mixture, synthetic_format
from jaxsynth.data.base import ImageSource
from jaxsynth.errors import ConfigError, DataError
from jaxsynth.recipes import classifier as classifier_lib
from jaxsynth.recipes.samplers import class_balanced_order
from tests.helpers import tiny_config


def write_sweep(directory, per_class=(3, 3, 3, 3, 3, 3, 3, 3, 3, 40), shape=(8, 8, 1),
                num_classes=10):
  """A one-shard sweep of noise images with `per_class` samples of each class."""
  labels = np.repeat(np.arange(len(per_class)), per_class)
  index = np.arange(labels.size)
  images = np.random.default_rng(0).integers(0, 255, (labels.size, *shape)).astype(np.uint8)
  os.makedirs(directory, exist_ok=True)
  shard = synthetic_format.write_shard(directory, 0, images, labels, index)
  synthetic_format.write_manifest(directory, {"num_classes": num_classes,
                                              "image_shape": list(shape), "shards": [shard]})
  return labels


def test_fraction_order_puts_the_asked_share_in_every_batch():
  order = mixture.FractionOrder(lambda g: g % 100, lambda g: g % 7, num_real=100,
                                global_batch=16, synthetic_per_batch=4)
  drawn = np.array([order(g) for g in range(16 * 50)])
  per_batch = (drawn.reshape(50, 16) >= 100).sum(axis=1)
  assert (per_batch == 4).all()
  # each part is read at consecutive positions of its own order: no sample is skipped
  assert sorted(drawn[drawn < 100]) == sorted(np.arange(12 * 50) % 100)


def test_class_balanced_sampler_on_a_fraction_mixture_follows_both_ratios():
  real_labels = np.repeat([0, 1], [90, 10])
  synthetic_labels = np.repeat([0, 1], [5, 45])
  batch, n_s = 20, mixture.synthetic_slots(0.25, 20)
  real = class_balanced_order(real_labels, 2, 0, 5 * (batch - n_s))
  synthetic = class_balanced_order(synthetic_labels, 2, 0, 5 * n_s)
  order = mixture.FractionOrder(real, synthetic, 100, batch, n_s)
  drawn = np.array([order(g) for g in range(batch * 400)])
  is_synthetic = drawn >= 100
  assert is_synthetic.mean() == pytest.approx(0.25)
  labels = np.concatenate([real_labels, synthetic_labels])[drawn]
  for part in (is_synthetic, ~is_synthetic):  # class-balanced within each part
    assert labels[part].mean() == pytest.approx(0.5, abs=0.03)


def test_synthetic_slots_refuses_fractions_that_leave_a_part_empty():
  with pytest.raises(ConfigError, match="data.synthetic.fraction"):
    mixture.synthetic_slots(1.0, 16)
  with pytest.raises(ConfigError, match="at least one real and one synthetic"):
    mixture.synthetic_slots(0.01, 16)


class Tiny(ImageSource):
  def load_image(self, index):
    return np.full(self.image_shape, index, np.uint8)


def test_concat_source_reads_each_part_and_keeps_groups():
  a = Tiny(np.array([0, 1]), 2, (2, 2, 1), groups=np.array([0, 1]))
  b = Tiny(np.array([1, 1, 0]), 2, (2, 2, 1), groups=np.array([[1], [1], [0]]))
  both = mixture.ConcatSource([a, b])
  assert both.labels.tolist() == [0, 1, 1, 1, 0] and len(both) == 5
  assert both[3]["image"][0, 0, 0] == 1  # b's sample 1
  assert both.groups[:, 0].tolist() == [0, 1, 1, 1, 0]
  counts = mixture.counts(both)
  assert counts["class_counts"] == [2, 3]
  assert [p["group_counts"] for p in counts["parts"]] == [[1, 1], [1, 2]]


def test_count_mix_trains_on_real_plus_synthetic_and_saves_the_counts(tmp_path):
  sweep = str(tmp_path / "sweep")
  synthetic = write_sweep(sweep)
  config = tiny_config(steps=3)
  config.data.synthetic.paths = (sweep,)
  setup = classifier_lib.build_setup(config)
  real = classifier_lib.build_setup(tiny_config(steps=3)).train
  assert len(setup.train) == len(real) + synthetic.size
  classifier_lib.train_single(config, str(tmp_path / "run"))
  saved = json.load(open(tmp_path / "run" / "mixture.json"))
  assert saved["class_counts"] == (real.class_counts()
                                   + np.bincount(synthetic, minlength=10)).tolist()
  assert saved["parts"][1]["class_counts"] == np.bincount(synthetic, minlength=10).tolist()
  assert saved["mix"] == "count"
  metrics = json.load(open(tmp_path / "run" / "metrics.json"))
  val = classifier_lib.open_source(config.data, "val", seed=0)
  assert sum(metrics["val"]["confusion_matrix"][0]) == int((val.labels == 0).sum())


def test_fraction_mix_epoch_is_one_pass_over_the_real_split(tmp_path):
  sweep = str(tmp_path / "sweep")
  write_sweep(sweep)
  config = tiny_config(steps=0)
  config.train.epochs = 1.0
  config.data.synthetic.paths = (sweep,)
  config.data.synthetic.mix = "fraction"
  config.data.synthetic.fraction = 0.25
  setup = classifier_lib.build_setup(config)
  real = len(setup.train.parts[0])
  assert setup.steps_per_epoch == -(-real // 12)  # 12 real slots of 16
  order = classifier_lib.training_order(config, setup)
  drawn = np.array([order(g) for g in range(16 * setup.steps_per_epoch)])
  assert (drawn >= real).mean() == pytest.approx(0.25)


def test_synthetic_set_with_other_classes_or_shape_is_refused(tmp_path):
  sweep = str(tmp_path / "three")
  write_sweep(sweep, per_class=(2, 2, 2), num_classes=3)
  config = tiny_config()
  config.data.synthetic.paths = (sweep,)
  with pytest.raises(DataError, match=r"has 3 classes but the real data .* has 10"):
    classifier_lib.build_setup(config)
  small = str(tmp_path / "small")
  write_sweep(small, shape=(6, 6, 1))
  config = tiny_config()
  config.data.image_size = 0
  config.data.synthetic.paths = (small,)
  with pytest.raises(DataError, match=r"gives 6x6x1 images but the real train split gives 8x8x1"):
    classifier_lib.build_setup(config)


def test_shard_reads_survive_cpython_ast_race_and_still_refuse_real_damage(tmp_path,
                                                                         monkeypatch):
  """CPython 3.11's AST race (a spurious SystemError while numpy parses a .npy header in a
  reader thread) failed a study cell as a 'damaged shard': the read is retried instead."""
  from jaxsynth import files
  directory = str(tmp_path / "sweep")
  labels = write_sweep(directory)
  entry = synthetic_format.read_manifest(directory)["shards"][0]
  real_load, failures = np.load, []

  def racy_load(*args, **kwargs):
    if len(failures) < 2:
      failures.append(1)
      raise SystemError(f"{files.AST_RACE} (before=75, after=72)")
    return real_load(*args, **kwargs)

  monkeypatch.setattr(np, "load", racy_load)
  _, read_labels, _ = synthetic_format.read_shard(directory, entry, (8, 8, 1))
  assert len(failures) == 2 and np.array_equal(read_labels, labels)
  # Another SystemError, or the race on every try, is still an error: a damaged shard.
  monkeypatch.setattr(np, "load", lambda *a, **k: (_ for _ in ()).throw(SystemError("other")))
  with pytest.raises(DataError, match="is damaged and cannot be read"):
    synthetic_format.read_shard(directory, entry, (8, 8, 1))
  monkeypatch.setattr(np, "load", lambda *a, **k: (_ for _ in ()).throw(
      SystemError(files.AST_RACE)))
  with pytest.raises(DataError, match="is damaged and cannot be read"):
    synthetic_format.read_shard(directory, entry, (8, 8, 1))
