"""The generation-metrics command and library function: every input form (npz of images or of
statistics, sweep, image folder), per-class figures equal to the subset's, plots, and bad input
as one line naming the file and the fix."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from jaxsynth.data import synthetic_format
from jaxsynth.errors import ConfigError, DataError
from jaxsynth.metrics import compare, generation, image_sets
from jaxsynth.metrics.features import make_extractor


def gray_set(n, seed, shift=0, size=6):
  rng = np.random.default_rng(seed)
  images = np.clip(rng.normal(110 + shift, 40, (n, size, size, 1)), 0, 255).astype(np.uint8)
  labels = np.arange(n) % 2
  return images, labels


@pytest.fixture
def two_sets(tmp_path):
  a_images, a_labels = gray_set(60, 0)
  b_images, b_labels = gray_set(50, 1, shift=30)
  np.savez(tmp_path / "real.npz", train_images=a_images, train_labels=a_labels,
           test_images=a_images[:10], test_labels=a_labels[:10],
           class_names=np.array(["normal", "rare"]))
  np.savez(tmp_path / "fake.npz", images=b_images, labels=b_labels)
  return str(tmp_path / "real.npz"), str(tmp_path / "fake.npz")


def pixel_features(images):
  return images.reshape(len(images), -1).astype(np.float32) / 255.0


def test_report_equals_the_metrics_of_pixel_features_overall_and_per_class(two_sets):
  real, fake = two_sets
  report = compare.compare_sets(real, fake, features="pixels", split="train", per_class=True,
                                kid_subsets=10, progress=False)
  a, b = image_sets.load_set(real, "train"), image_sets.load_set(fake)
  expected = generation.generation_metrics(
      pixel_features(a.images), pixel_features(b.images), real_labels=a.labels,
      fake_labels=b.labels, per_class=True, class_names=("normal", "rare"), kid_subsets=10,
      which=("fid", "kid", "pr", "dc", "mmd"))
  for key, value in expected.items():
    assert report[key] == pytest.approx(value, rel=1e-5), key
  rare = b.labels == 1
  subset = generation.generation_metrics(pixel_features(a.images[a.labels == 1]),
                                         pixel_features(b.images[rare]), kid_subsets=10,
                                         which=("fid", "kid", "pr", "dc", "mmd"))
  assert report["per_class.rare.kid_mean"] == pytest.approx(subset["kid_mean"], rel=1e-6)
  assert report["per_class.rare.n_fake"] == int(rare.sum()) == 25
  assert report["fid_reliable"] is True  # 50 > 36 features; a class of 25 is not
  assert report["per_class.rare.fid_reliable"] is False
  assert "kid_mean" in report["per_class.rare.fid_note"]
  assert report["fid"] > 0 and report["precision"] < 1


def test_saved_statistics_give_the_same_fid(two_sets, tmp_path):
  real, fake = two_sets
  stats = str(tmp_path / "real_stats.npz")
  compare.compare_sets(real, None, features="pixels:4", split="train", save_stats=stats,
                       progress=False)
  with np.load(stats) as saved:  # pytorch-fid's keys
    assert saved["mu"].shape == (16,) and saved["sigma"].shape == (16, 16)
  direct = compare.compare_sets(real, fake, features="pixels:4", split="train", per_class=True,
                                families=("fid",), progress=False)
  from_stats = compare.compare_sets(stats, fake, features="pixels:4", per_class=True,
                                    progress=False)
  assert from_stats["fid"] == pytest.approx(direct["fid"], rel=1e-9)
  assert from_stats["per_class.rare.fid"] == pytest.approx(direct["per_class.rare.fid"],
                                                           rel=1e-9)


def test_sweeps_and_image_folders_are_read_with_labels(tmp_path):
  images, labels = gray_set(12, 3)
  directory = str(tmp_path / "sweep" / "samples")
  entry = synthetic_format.write_shard(directory, 0, images, labels, np.arange(12))
  synthetic_format.write_manifest(directory, {"num_classes": 2, "image_shape": [6, 6, 1],
                                              "shards": [entry]})
  swept = image_sets.load_set(str(tmp_path / "sweep"))
  np.testing.assert_array_equal(swept.images, images)
  np.testing.assert_array_equal(swept.labels, labels)
  folder = tmp_path / "folder"
  folder.mkdir()
  rows = ["path,label,group"]
  for i, (image, label) in enumerate(zip(images, labels)):
    Image.fromarray(image[..., 0]).save(folder / f"{i}.png")
    rows.append(f"{i}.png,{label},{i % 3}")
  (folder / "train.csv").write_text("\n".join(rows) + "\n")
  listed = image_sets.load_set(str(folder))
  np.testing.assert_array_equal(listed.images, images)
  np.testing.assert_array_equal(listed.groups, np.arange(12) % 3)
  report = compare.compare_sets(str(folder), str(tmp_path / "sweep"), features="pixels",
                                families=("kid", "pr"), kid_subsets=5, progress=False)
  assert report["precision"] == 1.0 and report["n_fake"] == 12
  report = compare.compare_sets(str(folder), str(folder), features="pixels", per_group=True,
                                families=("pr",), progress=False)
  assert report["per_group.2.n_real"] == 4 and report["per_group.2.recall"] == 1.0


def test_cli_prints_json_and_writes_plots(two_sets, tmp_path, capsys):
  real, fake = two_sets
  code = compare.main([real, fake, "--split", "train", "--features", "pixels", "--per-class",
                       "--json", "--kid-subsets", "5", "--plots", str(tmp_path / "plots")])
  assert code == 0
  report = json.loads(capsys.readouterr().out)
  assert {"fid", "kid_mean", "kid_std", "precision", "recall", "f1", "density", "coverage",
          "mmd", "per_class.normal.fid", "per_class.rare.n_real"} <= set(report)
  assert os.path.exists(tmp_path / "plots" / "per_class_kid_mean.png")
  assert os.path.exists(tmp_path / "plots" / "grid_b.png")
  assert compare.main([real, fake, "--split", "train", "--features", "pixels",
                       "--kid-subsets", "5"]) == 0
  table = capsys.readouterr().out
  assert "kid_mean" in table and "overall" in table


def one_line_error(capsys, argv) -> str:
  assert compare.main(argv) == 2
  err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("jaxsynth")]
  assert len(err) == 1
  return err[0]


def test_bad_inputs_are_one_line_naming_the_file_and_fix(two_sets, tmp_path, capsys):
  real, fake = two_sets
  np.savez(tmp_path / "big.npz", images=np.zeros((5, 8, 8, 1), np.uint8))
  line = one_line_error(capsys, [real, str(tmp_path / "big.npz"), "--split", "train",
                                 "--features", "pixels"])
  assert "image shapes differ" in line and "big.npz" in line and "resize" in line
  np.savez(tmp_path / "lonely.npz", images=np.zeros((5, 6, 6, 1), np.uint8),
           labels=np.array([0, 0, 0, 0, 1]))
  line = one_line_error(capsys, [real, str(tmp_path / "lonely.npz"), "--split", "train",
                                 "--features", "pixels", "--per-class"])
  assert "lonely.npz" in line and "class(es) [1] hold a single image" in line
  line = one_line_error(capsys, [real, fake, "--split", "train", "--features",
                                 f"inception:{tmp_path / 'pt_inception.pth'}"])
  assert "pt_inception.pth does not exist" in line and "pixels" in line
  np.savez(tmp_path / "unlabelled.npz", images=np.zeros((5, 6, 6, 1), np.uint8))
  line = one_line_error(capsys, [real, str(tmp_path / "unlabelled.npz"), "--split", "train",
                                 "--features", "pixels", "--per-class"])
  assert "unlabelled.npz has no labels" in line and "drop --per-class" in line
  line = one_line_error(capsys, [real, fake, "--split", "train"])
  assert "classifier:WORKDIR" in line and "inception:WEIGHTS" in line and "pixels" in line
  line = one_line_error(capsys, [real, fake, "--features", "pixels"])
  assert "real.npz holds the splits train, test" in line and "--split" in line
  line = one_line_error(capsys, [str(tmp_path / "nowhere.npz"), fake, "--features", "pixels"])
  assert "nowhere.npz does not exist" in line


def test_extractors_pad_the_tail_and_resize_inside(tmp_path):
  images, _ = gray_set(7, 5, size=8)
  extractor = make_extractor("pixels:4", batch_size=4)
  feats = extractor.features(images)
  assert feats.shape == (7, 16)
  from jaxsynth.data import augment
  expected = np.stack([augment.resize(image, 4) for image in images]).reshape(7, -1) / 255.0
  np.testing.assert_allclose(feats, expected, atol=1e-6)
  with pytest.raises(ConfigError, match="pixels:16"):
    make_extractor("pixels:x")
  with pytest.raises(DataError, match="uint8 images"):
    extractor.features(images.astype(np.float32))
