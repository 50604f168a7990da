"""grain pipelines: determinism, resume, per-process sharding, evaluation coverage, augmentation."""

import numpy as np
import pytest

from configs import classifier
from jaxsynth.data import augment, pipeline
from jaxsynth.errors import ConfigError
from tests.conftest import make_array_source


def data_cfg(**augment_options):
  cfg = classifier.get_config("digits").data
  cfg.image_size = 0
  cfg.threads = 2
  for key, value in augment_options.items():
    cfg.augment[key] = value
  return cfg


def train_batches(source, cfg, *, seed=0, start=0, steps=6, batch=8, process=0, processes=1):
  ds = pipeline.train_dataset(source, cfg, global_batch=batch, seed=seed, start_step=start,
                              num_steps=steps, process_index=process, process_count=processes)
  return list(ds)


def test_same_seed_gives_identical_batches():
  source = make_array_source(n=30)
  cfg = data_cfg(random_crop=True, hflip=True, rotation=30.0, color_jitter=0.4)
  a, b = train_batches(source, cfg), train_batches(source, cfg)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x["image"], y["image"])
    np.testing.assert_array_equal(x["label"], y["label"])
  c = train_batches(source, cfg, seed=1)
  assert not np.array_equal(a[0]["image"], c[0]["image"])


def test_epochs_visit_every_sample_once_and_reshuffle():
  source = make_array_source(n=24, num_classes=4)
  order = pipeline.EpochShuffle(24, seed=3)
  first = [order(g) for g in range(24)]
  second = [order(g) for g in range(24, 48)]
  assert sorted(first) == list(range(24)) and sorted(second) == list(range(24))
  assert first != second
  labels = np.concatenate([b["label"] for b in train_batches(source, data_cfg(), steps=3)])
  np.testing.assert_array_equal(np.bincount(labels, minlength=4), [6, 6, 6, 6])


def test_resume_reads_the_same_batches():
  source = make_array_source(n=30)
  cfg = data_cfg(random_crop=True, hflip=True)
  full = train_batches(source, cfg, steps=7)
  resumed = train_batches(source, cfg, start=4, steps=7)
  assert len(resumed) == 3
  for x, y in zip(full[4:], resumed):
    np.testing.assert_array_equal(x["image"], y["image"])


def test_processes_split_each_global_batch():
  source = make_array_source(n=30)
  cfg = data_cfg(random_crop=True, rotation=10.0)
  single = train_batches(source, cfg, batch=8)
  parts = [train_batches(source, cfg, batch=8, process=p, processes=2) for p in range(2)]
  for step, whole in enumerate(single):
    joined = np.concatenate([parts[0][step]["image"], parts[1][step]["image"]])
    np.testing.assert_array_equal(joined, whole["image"])


@pytest.mark.parametrize("n,batch,processes", [(1, 4, 1), (17, 4, 1), (16, 4, 1), (23, 8, 2),
                                               (5, 8, 4)])
def test_evaluation_sees_every_sample_exactly_once(n, batch, processes):
  source = make_array_source(n=n)
  cfg = data_cfg()
  seen = []
  for p in range(processes):
    for b in pipeline.eval_dataset(source, cfg, global_batch=batch, process_index=p,
                                   process_count=processes):
      assert b["image"].shape[0] == batch // processes
      seen.extend(b["index"][b["mask"] > 0].tolist())
      np.testing.assert_array_equal(b["label"][b["mask"] > 0], source.labels[b["index"][b["mask"] > 0]])
  assert sorted(seen) == list(range(n))


def test_preprocess_resizes_converts_and_normalises():
  cfg = data_cfg()
  cfg.image_size, cfg.channels = 12, 3
  image = np.full((8, 8, 1), 255, np.uint8)
  out = augment.preprocess(image, cfg, None)
  assert out.shape == (12, 12, 3) and out.dtype == np.float32
  np.testing.assert_allclose(out, 1.0)


def test_per_channel_normalisation_replaces_the_scalars():
  cfg = data_cfg()
  cfg.channels = 3
  cfg.channel_mean, cfg.channel_std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
  image = np.stack([np.full((4, 4), v, np.uint8) for v in (0, 128, 255)], axis=-1)
  out = augment.preprocess(image, cfg, None)
  expected = (np.array([0, 128, 255]) / 255.0 - np.array(cfg.channel_mean)) / np.array(
      cfg.channel_std)
  np.testing.assert_allclose(out[0, 0], expected, rtol=1e-5)
  # A gray image would broadcast silently against 3 means: a clear error instead.
  cfg.channels = 0
  with pytest.raises(ConfigError, match="data.channel_mean.*3 values.*1 channel"):
    augment.preprocess(image[..., :1], cfg, None)


def test_augmentations_change_images_but_keep_shapes():
  rng = np.random.default_rng(0)
  image = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
  cropped = augment.random_crop(image, 4, np.random.default_rng(1))
  assert cropped.shape == image.shape
  rotated = augment.rotate(image, 30.0, np.random.default_rng(2))
  assert rotated.shape == image.shape and not np.array_equal(rotated, image)
  jittered = augment.color_jitter(image / 255.0, 0.5, np.random.default_rng(3))
  assert jittered.min() >= 0 and jittered.max() <= 1
  assert not np.allclose(jittered, image / 255.0)
