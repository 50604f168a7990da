"""Tests of the data sources: every format, holdouts, long tails and bad-input messages."""

from __future__ import annotations

import io
import os
import pickle

import numpy as np
import pytest
from PIL import Image

from jaxsynth.config import base_config
from jaxsynth.data import imbalance, sources, synthetic_format
from jaxsynth.errors import ConfigError, DataError


def data_config(**overrides):
  """config.data with the given keys replaced."""
  cfg = base_config("train_classifier").data
  for key, value in overrides.items():
    cfg[key] = value
  return cfg


def tagged_images(n: int, shape=(8, 8), offset: int = 0) -> np.ndarray:
  """uint8 images whose first two pixels encode their id (offset + i)."""
  images = np.zeros((n, *shape), np.uint8)
  ids = np.arange(n) + offset
  images[:, 0, 0], images[:, 0, 1] = ids % 256, ids // 256
  return images


def image_id(image: np.ndarray) -> int:
  return int(image[0, 0, 0]) + 256 * int(image[0, 1, 0])


def ids_of(source) -> np.ndarray:
  return np.asarray([image_id(source[i]["image"]) for i in range(len(source))])


# --------------------------------------------------------------------------------------- npz

def write_npz(path, splits=("train", "val", "test"), n=(30, 9, 9), num_classes=3, **extra):
  arrays = {}
  offset = 0
  for split, count in zip(splits, n):
    arrays[f"{split}_images"] = tagged_images(count, offset=offset)
    arrays[f"{split}_labels"] = (np.arange(count) % num_classes).reshape(-1, 1).astype(np.uint8)
    offset += count
  arrays.update(extra)
  np.savez(path, **arrays)
  return arrays


def test_npz_loads_images_labels_groups_and_names(tmp_path):
  path = str(tmp_path / "set.npz")
  arrays = write_npz(path, train_groups=np.arange(30) // 10,
                     class_names=np.array(["normal", "benign", "malignant"]))
  train = sources.open_source(data_config(source="npz", path=path), "train")
  assert len(train) == 30 and train.num_classes == 3 and train.image_shape == (8, 8, 1)
  assert train.class_names == ("normal", "benign", "malignant")
  record = train[7]
  assert record["image"].dtype == np.uint8 and record["image"].shape == (8, 8, 1)
  np.testing.assert_array_equal(record["image"][..., 0], arrays["train_images"][7])
  assert record["label"] == 1 and list(record["group"]) == [0]
  test = sources.open_source(data_config(source="npz", path=path), "test")
  np.testing.assert_array_equal(test.labels, arrays["test_labels"][:, 0])
  assert ids_of(test).tolist() == list(range(39, 48))


def test_npz_without_val_holds_it_out_of_train(tmp_path):
  path = str(tmp_path / "set.npz")
  write_npz(path, splits=("train", "test"), n=(60, 6))
  cfg = data_config(source="npz", path=path, val_fraction=0.2)
  train, val = (sources.open_source(cfg, s) for s in ("train", "val"))
  assert len(train) == 48 and len(val) == 12
  np.testing.assert_array_equal(val.class_counts(), [4, 4, 4])
  assert set(ids_of(train)) | set(ids_of(val)) == set(range(60))
  assert not set(ids_of(train)) & set(ids_of(val))
  np.testing.assert_array_equal(ids_of(val), ids_of(sources.open_source(cfg, "val", seed=5)))
  with pytest.raises(DataError, match=r"no val split and data.val_fraction is 0"):
    sources.open_source(data_config(source="npz", path=path, val_fraction=0.0), "val")


def test_npz_bad_inputs_name_the_file_and_key(tmp_path):
  missing = str(tmp_path / "nope.npz")
  with pytest.raises(DataError, match="nope.npz does not exist"):
    sources.open_source(data_config(source="npz", path=missing), "train")

  path = str(tmp_path / "nolabels.npz")
  np.savez(path, train_images=tagged_images(4))
  with pytest.raises(DataError, match=r"nolabels.npz has no key 'train_labels'; keys present: "
                                      r"\['train_images'\]"):
    sources.open_source(data_config(source="npz", path=path), "train")

  path = str(tmp_path / "float.npz")
  np.savez(path, train_images=np.zeros((4, 8, 8), np.float32), train_labels=np.zeros(4))
  with pytest.raises(DataError, match=r"float.npz key 'train_images' has dtype float32, not uint8"):
    sources.open_source(data_config(source="npz", path=path), "train")

  path = str(tmp_path / "count.npz")
  np.savez(path, train_images=tagged_images(4), train_labels=np.zeros(5, np.int64))
  with pytest.raises(DataError, match=r"count.npz has 4 rows in 'train_images' but 5"):
    sources.open_source(data_config(source="npz", path=path), "train")

  path = str(tmp_path / "range.npz")
  np.savez(path, train_images=tagged_images(4), train_labels=np.array([0, 1, 5, 1]))
  with pytest.raises(DataError, match=r"range.npz key 'train_labels' row 2 has label 5, "
                                      r"outside the 2 classes"):
    sources.open_source(data_config(source="npz", path=path, num_classes=2), "train")

  path = str(tmp_path / "empty_class.npz")
  np.savez(path, train_images=tagged_images(4), train_labels=np.array([0, 2, 2, 0]))
  with pytest.raises(DataError, match=r"class 1 \('1'\) has no samples in the train split of "
                                      r".*empty_class.npz"):
    sources.open_source(data_config(source="npz", path=path, val_fraction=0.0,
                                    test_fraction=0.0), "train")

  path = str(tmp_path / "objects.npz")
  write_npz(path, class_names=np.array(["a", "b", "c"], dtype=object))
  with pytest.raises(DataError, match=r"objects.npz key 'class_names' holds Python objects"):
    sources.open_source(data_config(source="npz", path=path), "train")

  path = str(tmp_path / "garbage.npz")
  with open(path, "wb") as f:
    f.write(b"not a zip file")
  with pytest.raises(DataError, match="garbage.npz is not a readable .npz"):
    sources.open_source(data_config(source="npz", path=path), "train")


def test_unknown_source_is_a_data_error():
  with pytest.raises(DataError, match="unknown data.source 'hdf5'"):
    sources.open_source(data_config(source="hdf5"), "train")


# ----------------------------------------------------------------------------------- long tail

def test_long_tail_applies_to_train_only_with_exact_ratio(tmp_path):
  path = str(tmp_path / "balanced.npz")
  write_npz(path, n=(200, 15, 15), num_classes=5)
  cfg = data_config(source="npz", path=path, imbalance_ratio=4.0)
  train = sources.open_source(cfg, "train", seed=0)
  np.testing.assert_array_equal(train.class_counts(), [40, 28, 20, 14, 10])
  assert imbalance.imbalance_ratio(train.class_counts()) == 4.0
  assert len(sources.open_source(cfg, "val", seed=0)) == 15
  again = sources.open_source(cfg, "train", seed=0)
  other = sources.open_source(cfg, "train", seed=1)
  np.testing.assert_array_equal(ids_of(train), ids_of(again))
  assert not np.array_equal(ids_of(train), ids_of(other))

  counts = sources.open_source(data_config(source="npz", path=path, class_counts=(5, 4, 3, 2, 1)),
                               "train")
  np.testing.assert_array_equal(counts.class_counts(), [5, 4, 3, 2, 1])
  with pytest.raises(ConfigError, match="data.class_counts' has 2 entries but the data has 5"):
    sources.open_source(data_config(source="npz", path=path, class_counts=(5, 4)), "train")
  with pytest.raises(DataError, match="class 0 has 40 samples but 99 were asked"):
    sources.open_source(data_config(source="npz", path=path, class_counts=(99, 1, 1, 1, 1)),
                        "train")


# ------------------------------------------------------------------------------------ folder

def save_image(path, array, fmt="PNG"):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(array.squeeze()).save(path, format=fmt)


def write_folder(root, n=(12, 6, 6), names=("healthy", "sick"), with_csv=("train", "val",
                                                                            "test")):
  offset = 0
  images = {}
  for split, count in zip(("train", "val", "test"), n):
    rows = ["path,label,site"]
    for i in range(count):
      image = tagged_images(1, offset=offset + i)[0]
      rel = f"img/{split}_{i}.png"
      save_image(os.path.join(root, rel), image)
      images[(split, i)] = image
      label = names[i % 2] if i % 3 == 0 else str(i % 2)  # ids and names both work
      rows.append(f"{rel},{label},{i % 4}")
    offset += count
    if split in with_csv:
      (root / f"{split}.csv").write_text("\n".join(rows) + "\n")
  (root / "classes.txt").write_text("\n".join(names) + "\n")
  return images


def test_folder_loads_lazily_with_names_and_groups(tmp_path):
  images = write_folder(tmp_path)
  cfg = data_config(source="folder", path=str(tmp_path))
  train = sources.open_source(cfg, "train")
  assert isinstance(train, sources.FolderSource)
  assert len(train) == 12 and train.class_names == ("healthy", "sick")
  assert train.labels.tolist() == [i % 2 for i in range(12)]
  assert train.groups[:, 0].tolist() == [i % 4 for i in range(12)]
  record = train[5]
  np.testing.assert_array_equal(record["image"][..., 0], images[("train", 5)])
  assert record["image"].shape == (8, 8, 1) and record["group"].tolist() == [1]
  assert ids_of(sources.open_source(cfg, "test")).tolist() == list(range(18, 24))
  clone = pickle.loads(pickle.dumps(train))
  np.testing.assert_array_equal(clone[5]["image"], record["image"])


def test_folder_corrupt_image_fails_only_when_loaded(tmp_path):
  write_folder(tmp_path)
  (tmp_path / "img" / "train_9.png").write_bytes(b"\x89PNG truncated")
  os.remove(tmp_path / "img" / "train_10.png")
  train = sources.open_source(data_config(source="folder", path=str(tmp_path)), "train")
  assert train[8]["image"].shape == (8, 8, 1)
  with pytest.raises(DataError, match=r"image img/train_9.png \(.*train.csv line 11\) cannot be "
                                      r"decoded"):
    train.load_image(9)
  with pytest.raises(DataError, match=r"img/train_10.png .*line 12.* does not exist"):
    train.load_image(10)


def test_folder_channel_and_size_mismatch(tmp_path):
  write_folder(tmp_path)
  save_image(str(tmp_path / "img" / "train_3.png"), np.zeros((8, 8, 3), np.uint8))
  save_image(str(tmp_path / "img" / "train_4.png"), np.zeros((10, 10), np.uint8))
  save_image(str(tmp_path / "img" / "train_5.jpg"), np.full((8, 8, 3), 200, np.uint8), "JPEG")
  csv = (tmp_path / "train.csv").read_text().replace("img/train_5.png", "img/train_5.jpg")
  (tmp_path / "train.csv").write_text(csv)

  train = sources.open_source(data_config(source="folder", path=str(tmp_path)), "train")
  with pytest.raises(DataError, match=r"train_3.png .* has 3 channel\(s\) but the first image "
                                      r"img/train_0.png has 1.*data.channels"):
    train.load_image(3)
  with pytest.raises(DataError, match=r"train_4.png .* is 10x10 but the first image .* is 8x8: "
                                      r".*data.image_size"):
    train.load_image(4)

  converted = sources.open_source(
      data_config(source="folder", path=str(tmp_path), channels=3, image_size=8), "train")
  assert converted.image_shape == (8, 8, 3)
  assert converted.load_image(3).shape == (8, 8, 3)
  assert converted.load_image(4).shape == (10, 10, 3)
  assert abs(int(converted.load_image(5).mean()) - 200) <= 2


def test_folder_bad_inputs(tmp_path):
  with pytest.raises(DataError, match="image folder .*missing does not exist"):
    sources.open_source(data_config(source="folder", path=str(tmp_path / "missing")), "train")
  with pytest.raises(DataError, match=r"train.csv does not exist"):
    sources.open_source(data_config(source="folder", path=str(tmp_path)), "train")

  write_folder(tmp_path)
  (tmp_path / "train.csv").write_text("file,class\nimg/train_0.png,0\n")
  with pytest.raises(DataError, match=r"train.csv line 1 .*header must be 'path,label'"):
    sources.open_source(data_config(source="folder", path=str(tmp_path)), "train")
  (tmp_path / "train.csv").write_text("path,label\nimg/train_0.png,0\nimg/train_1.png,cat\n")
  with pytest.raises(DataError, match=r"train.csv line 3 column 'label' is 'cat', not an "
                                      r"integer.*classes.txt"):
    sources.open_source(data_config(source="folder", path=str(tmp_path)), "train")
  (tmp_path / "train.csv").write_text("path,label\nimg/train_0.png,0\nimg/train_1.png,7\n")
  with pytest.raises(DataError, match=r"train.csv line 3 has label 7, outside the 2 classes"):
    sources.open_source(data_config(source="folder", path=str(tmp_path)), "train")

  Image.fromarray(np.zeros((8, 8), np.uint16)).save(tmp_path / "img" / "deep.png")
  (tmp_path / "train.csv").write_text("path,label\nimg/train_0.png,0\nimg/deep.png,1\n")
  train = sources.open_source(data_config(source="folder", path=str(tmp_path)), "train")
  with pytest.raises(DataError, match=r"img/deep.png .*line 3.* is a 'I;16' image, not 8-bit"):
    train.load_image(1)


def test_folder_without_val_csv_holds_it_out(tmp_path):
  write_folder(tmp_path, n=(40, 6, 6), with_csv=("train", "test"))
  cfg = data_config(source="folder", path=str(tmp_path), val_fraction=0.25)
  train, val = (sources.open_source(cfg, s) for s in ("train", "val"))
  assert len(train) == 30 and len(val) == 10
  np.testing.assert_array_equal(val.class_counts(), [5, 5])
  assert not set(ids_of(train)) & set(ids_of(val))


# --------------------------------------------------------------------------------- synthetic

def write_sweep(samples, counts=(10, 10, 5), num_classes=3, **manifest_extra):
  shards, offset = [], 0
  for shard_id, count in enumerate(counts):
    index = np.arange(offset, offset + count)
    images = tagged_images(count, offset=offset)[..., None]
    shards.append(synthetic_format.write_shard(str(samples), shard_id, images,
                                               index % num_classes, index))
    offset += count
  manifest = {"num_classes": num_classes, "image_shape": [8, 8, 1], "shards": shards,
              **manifest_extra}
  synthetic_format.write_manifest(str(samples), manifest)
  return manifest


def test_synthetic_reads_shards_lazily(tmp_path):
  write_sweep(tmp_path / "samples", class_names=["a", "b", "c"], sampler={"steps": 50})
  assert sorted(os.listdir(tmp_path / "samples")) == [
      "manifest.json", "shard-00000.npz", "shard-00001.npz", "shard-00002.npz"]
  cfg = data_config(source="synthetic", path=str(tmp_path), val_fraction=0.0, test_fraction=0.0)
  train = sources.open_source(cfg, "train")
  assert isinstance(train, sources.SyntheticSource) and len(train) == 25
  assert train.class_names == ("a", "b", "c") and train.image_shape == (8, 8, 1)
  assert train.labels.tolist() == [i % 3 for i in range(25)]
  train.cache_shards = 2
  assert ids_of(train).tolist() == list(range(25))
  assert len(train._cache_shards) == 2
  assert "shard-00002.npz row 3 (sample index 23)" in train.describe(23)
  clone = pickle.loads(pickle.dumps(train))
  assert image_id(clone[17]["image"]) == 17
  samples_cfg = data_config(source="synthetic", path=str(tmp_path / "samples"))
  assert len(sources.open_source(samples_cfg, "train")) < 25  # val and test held out


def test_synthetic_holdout_is_stratified_disjoint_and_fixed(tmp_path):
  write_sweep(tmp_path, counts=(30, 30), num_classes=3)
  cfg = data_config(source="synthetic", path=str(tmp_path), val_fraction=0.1, test_fraction=0.2)
  parts = {s: sources.open_source(cfg, s, seed=3) for s in ("train", "val", "test")}
  np.testing.assert_array_equal(parts["val"].class_counts(), [2, 2, 2])
  np.testing.assert_array_equal(parts["test"].class_counts(), [4, 4, 4])
  ids = {s: set(ids_of(p)) for s, p in parts.items()}
  assert ids["train"] | ids["val"] | ids["test"] == set(range(60))
  assert sum(len(v) for v in ids.values()) == 60
  assert ids["val"] == set(ids_of(sources.open_source(cfg, "val", seed=9)))
  with pytest.raises(DataError, match="no test split and data.test_fraction is 0"):
    sources.open_source(data_config(source="synthetic", path=str(tmp_path), test_fraction=0.0),
                        "test")


def test_synthetic_bad_inputs(tmp_path):
  with pytest.raises(DataError, match=r"no manifest.json in"):
    sources.open_source(data_config(source="synthetic", path=str(tmp_path)), "train")
  manifest = write_sweep(tmp_path, counts=(4, 4))
  with pytest.raises(DataError, match="already exists"):
    synthetic_format.write_shard(str(tmp_path), 0, tagged_images(4)[..., None],
                                 np.zeros(4, int), np.arange(4))
  with pytest.raises(DataError, match=r"manifest.json lacks key\(s\) \['image_shape'\]"):
    synthetic_format.write_manifest(str(tmp_path), {"num_classes": 3, "shards": []})

  manifest["shards"].append({"file": "shard-00009.npz", "count": 3})
  synthetic_format.write_manifest(str(tmp_path), manifest)
  with pytest.raises(DataError, match=r"shard .*shard-00009.npz listed in manifest.json does not "
                                      r"exist"):
    sources.open_source(data_config(source="synthetic", path=str(tmp_path)), "train")

  manifest["shards"][-1] = {"file": "shard-00001.npz", "count": 5}
  synthetic_format.write_manifest(str(tmp_path), manifest)
  with pytest.raises(DataError, match=r"shard-00001.npz key 'labels' has \(4,\) rows but "
                                      r"manifest.json says 5"):
    sources.open_source(data_config(source="synthetic", path=str(tmp_path)), "train")

  manifest["shards"].pop()
  manifest["image_shape"] = [16, 16, 1]
  synthetic_format.write_manifest(str(tmp_path), manifest)
  train = sources.open_source(data_config(source="synthetic", path=str(tmp_path)), "train")
  with pytest.raises(DataError, match=r"shard-0000[01].npz key 'images' is uint8 \(4, 8, 8, 1\)"):
    train.load_image(0)
  assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]


# -------------------------------------------------------------------------------------- tfds

def _png(array: np.ndarray) -> bytes:
  buffer = io.BytesIO()
  Image.fromarray(array[..., 0]).save(buffer, format="PNG")
  return buffer.getvalue()


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
  """A tiny prepared TFDS set (array_record, PNG-encoded images), built without tensorflow."""
  tfds = pytest.importorskip("tensorflow_datasets")
  data_dir = str(tmp_path_factory.mktemp("tfds"))

  class TinyScans(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    # A one-part module name keeps tfds from looking the builder's code up as a package
    # resource, which needs the optional `importlib_resources` package.
    __module__ = "tiny_scans_builder"
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
          "image": tfds.features.Image(shape=(8, 8, 1)),
          "label": tfds.features.ClassLabel(names=["normal", "lesion", "other"])}))

    def _split_generators(self, dl_manager):
      del dl_manager
      return {"train": self._generate_examples(0, 30), "test": self._generate_examples(30, 6)}

    def _generate_examples(self, start, count):
      for i in range(start, start + count):
        yield i, {"image": _png(tagged_images(1, offset=i)[0][..., None]), "label": i % 3}

  try:
    TinyScans(data_dir=data_dir, file_format="array_record").download_and_prepare()
  except ImportError as e:  # only if this tfds version needs tensorflow to write
    pytest.skip(f"building a TFDS set needs tensorflow here: {e}")
  return data_dir


def test_tfds_reads_a_prepared_set_and_holds_out_val(tfds_dir):
  cfg = data_config(source="tfds", tfds_name="tiny_scans", tfds_data_dir=tfds_dir,
                    val_fraction=0.2)
  train, val, test = (sources.open_source(cfg, s) for s in ("train", "val", "test"))
  assert train.num_classes == 3 and train.class_names == ("normal", "lesion", "other")
  assert len(train) == 24 and len(val) == 6 and len(test) == 6
  for source in (train, val, test):
    ids = ids_of(source)
    np.testing.assert_array_equal(source.labels, ids % 3)
    assert source[0]["image"].shape == (8, 8, 1)
  assert set(ids_of(test)) == set(range(30, 36))
  assert not set(ids_of(train)) & set(ids_of(val))


def test_tfds_bad_inputs(tfds_dir, tmp_path):
  with pytest.raises(DataError, match="TFDS data set 'no_such_set' .* cannot be found"):
    sources.open_source(data_config(source="tfds", tfds_name="no_such_set",
                                    tfds_data_dir=tfds_dir), "train")
  with pytest.raises(DataError, match="tfds_data_dir .*missing does not exist"):
    sources.open_source(data_config(source="tfds", tfds_name="tiny_scans",
                                    tfds_data_dir=str(tmp_path / "missing")), "train")


# ------------------------------------------------------------------------------------ digits

def test_digits_split_is_fixed_and_stratified():
  cfg = data_config(source="digits")
  parts = {s: sources.open_source(cfg, s, seed=0) for s in ("train", "val", "test")}
  assert sum(len(p) for p in parts.values()) == 1797
  assert len(parts["train"]) == pytest.approx(0.6 * 1797, abs=10)
  for part in parts.values():
    assert part.num_classes == 10 and part.class_names == tuple("0123456789")
    assert part.class_counts().min() > 0
    image = part[0]["image"]
    assert image.dtype == np.uint8 and image.shape == (8, 8, 1)
  assert parts["train"].images.max() == 255
  again = sources.open_source(cfg, "val", seed=7)
  np.testing.assert_array_equal(again.images, parts["val"].images)
  np.testing.assert_array_equal(again.labels, parts["val"].labels)


def test_digits_long_tail():
  cfg = data_config(source="digits", imbalance_ratio=10.0)
  train = sources.open_source(cfg, "train", seed=0)
  counts = train.class_counts()
  assert counts[0] > counts[-1] and np.all(np.diff(counts[1:]) <= 0)
  assert imbalance.imbalance_ratio(counts) == pytest.approx(10.0, rel=0.1)
  plain = sources.open_source(data_config(source="digits"), "test")
  np.testing.assert_array_equal(sources.open_source(cfg, "test", seed=0).labels, plain.labels)
