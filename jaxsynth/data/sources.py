"""Concrete image sources (npz, folder + CSV, TFDS, synthetic sweeps, digits) and `open_source`.

`open_source(config.data, split, seed)` opens one split of the configured data set. Splits a
data set lacks (val/test of a synthetic set, a folder without `val.csv`, ...) are held out of
its train split, stratified by class with a fixed seed, so they never change between runs.
The train split is then long-tailed with the run seed when `data.class_counts` or
`data.imbalance_ratio` asks for it. Images are decoded lazily except for `digits`.
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import io
import os
import threading
import weakref
import zipfile
from typing import Callable

import numpy as np

from jaxsynth.data import imbalance, synthetic_format
from jaxsynth.data.base import SPLITS, ImageSource, SubsetSource
from jaxsynth.errors import ConfigError, DataError

#: Seed of every fixed split (holdouts, digits): independent of the run seed on purpose.
SPLIT_SEED = 0
DIGITS_FRACTIONS = (0.2, 0.2)  # val, test; the rest (60%) is train
#: PIL modes decoded as 8-bit gray ("L") or RGB; alpha channels are dropped.
_PIL_MODES = {"1": "L", "L": "L", "LA": "L", "P": "RGB", "PA": "RGB", "RGB": "RGB",
              "RGBA": "RGB", "RGBX": "RGB", "CMYK": "RGB", "YCbCr": "RGB", "LAB": "RGB",
              "HSV": "RGB"}


class _Source(ImageSource):
  """An ImageSource that names where sample i comes from and pickles without locks/caches."""

  def describe(self, index: int) -> str:
    """Where sample `index` lives, for error messages."""
    return f"{self.name} sample {index}"

  def _reset(self) -> None:
    """Creates the unpicklable state (locks, caches)."""

  def __getstate__(self) -> dict:
    state = dict(self.__dict__)
    for key in [k for k in state if k.startswith("_cache") or k == "_lock"]:
      del state[key]
    return state

  def __setstate__(self, state: dict) -> None:
    self.__dict__.update(state)
    self._reset()


class ArraySource(_Source):
  """Images held in memory as one uint8 (N, H, W, C) array."""

  def __init__(self, images: np.ndarray, labels, num_classes: int = 0, groups=None,
               class_names: tuple[str, ...] = (), name: str = "arrays"):
    labels = np.asarray(labels, dtype=np.int64)
    super().__init__(labels, num_classes or _max_label(labels) + 1, images.shape[1:], groups,
                     class_names)
    self.images = images
    self.name = name

  def load_image(self, index: int) -> np.ndarray:
    return self.images[index]


# --------------------------------------------------------------------------------------- npz

_NPZ_ARRAYS: weakref.WeakValueDictionary = weakref.WeakValueDictionary()


def _npz_headers(path: str) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
  """Shape and dtype of every array in an .npz file, read from the headers only."""
  if not os.path.isfile(path):
    raise DataError(f"data file {path} does not exist: set data.path to a MedMNIST-style .npz "
                    "with {train,val,test}_images and _labels")
  headers = {}
  try:
    with zipfile.ZipFile(path) as archive:
      for member in archive.namelist():
        if not member.endswith(".npy"):
          continue
        with archive.open(member) as f:
          version = np.lib.format.read_magic(f)
          read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                  else np.lib.format.read_array_header_2_0)
          shape, _, dtype = read(f)
        headers[member[:-4]] = (tuple(shape), dtype)
  except (zipfile.BadZipFile, ValueError, OSError, EOFError) as e:
    raise DataError(f"data file {path} is not a readable .npz file ({e}): write it with "
                    "np.savez or np.savez_compressed") from None
  return headers


def _npz_array(path: str, key: str, dtype: np.dtype) -> np.ndarray:
  """One array of an .npz file; a DataError names the key when it cannot be read."""
  if dtype.hasobject:
    raise DataError(f"data file {path} key '{key}' holds Python objects, which need pickle: "
                    "save it as a plain array (e.g. np.array(names, dtype=str))")
  try:
    with np.load(path, allow_pickle=False) as npz:
      return npz[key]
  except Exception as e:  # zlib, zipfile and format errors all mean a damaged file
    raise DataError(f"data file {path} key '{key}' cannot be read ({e}): rewrite the file") \
        from None


def _as_labels(labels: np.ndarray, where: str) -> np.ndarray:
  """Integer class ids (N,) from (N,) or (N, 1) labels."""
  if labels.ndim == 2 and labels.shape[1] == 1:
    labels = labels[:, 0]
  if labels.ndim != 1:
    raise DataError(f"{where} has shape {labels.shape}; single-label class ids (N,) or (N, 1) "
                    "are needed (convert one-hot labels with argmax)")
  if np.issubdtype(labels.dtype, np.floating) and np.all(labels == np.round(labels)):
    labels = labels.astype(np.int64)
  if not (np.issubdtype(labels.dtype, np.integer) or labels.dtype == np.bool_):
    raise DataError(f"{where} has dtype {labels.dtype}; labels must be integer class ids")
  return labels.astype(np.int64)


class NpzSource(_Source):
  """One split of a MedMNIST-style .npz file; its image array is read once, on first use."""

  def __init__(self, path: str, split: str, num_classes: int = 0,
               class_names: tuple[str, ...] = (), headers: dict | None = None):
    headers = headers if headers is not None else _npz_headers(path)
    image_key, label_key, group_key = (f"{split}_{k}" for k in ("images", "labels", "groups"))
    for key in (image_key, label_key):
      if key not in headers:
        raise DataError(f"data file {path} has no key '{key}'; keys present: "
                        f"{sorted(headers)}. Use the MedMNIST layout: {split}_images uint8 "
                        f"(N, H, W[, C]) and {split}_labels (N,)")
    shape, dtype = headers[image_key]
    if dtype != np.uint8:
      raise DataError(f"data file {path} key '{image_key}' has dtype {dtype}, not uint8: scale "
                      "the images to 0..255 and save them with .astype(np.uint8)")
    if len(shape) not in (3, 4):
      raise DataError(f"data file {path} key '{image_key}' has shape {shape}: use (N, H, W) or "
                      "(N, H, W, C)")
    self.path, self.split, self.image_key = path, split, image_key
    labels = _as_labels(_npz_array(path, label_key, headers[label_key][1]),
                        f"data file {path} key '{label_key}'")
    groups = None
    if group_key in headers:
      groups = _npz_array(path, group_key, headers[group_key][1])
      groups = groups.reshape(groups.shape[0], -1) if groups.ndim else groups
      if groups.ndim != 2 or not np.issubdtype(groups.dtype, np.integer):
        raise DataError(f"data file {path} key '{group_key}' is {groups.dtype} {groups.shape}: "
                        "use integer group ids (N,) or (N, G)")
    for key, array in ((label_key, labels), (group_key, groups)):
      if array is not None and array.shape[0] != shape[0]:
        raise DataError(f"data file {path} has {shape[0]} rows in '{image_key}' but "
                        f"{array.shape[0]} in '{key}': every image needs one row")
    image_shape = shape[1:] if len(shape) == 4 else shape[1:] + (1,)
    super().__init__(labels, num_classes or _max_label(labels) + 1, image_shape, groups,
                     class_names)
    self.name = path
    self._reset()

  def _reset(self) -> None:
    self._lock = threading.Lock()
    self._cache_images = None

  def describe(self, index: int) -> str:
    return f"data file {self.path} key '{self.split}_labels' row {index}"

  def _images(self) -> np.ndarray:
    if self._cache_images is None:
      with self._lock:
        if self._cache_images is None:
          stat = os.stat(self.path)
          key = (os.path.realpath(self.path), self.image_key, stat.st_mtime_ns, stat.st_size)
          images = _NPZ_ARRAYS.get(key)
          if images is None:  # shared by every source of this file that is alive
            images = _npz_array(self.path, self.image_key, np.dtype(np.uint8))
            if images.ndim == 3:
              images = images[..., None]
            _NPZ_ARRAYS[key] = images
          self._cache_images = images
    return self._cache_images

  def load_image(self, index: int) -> np.ndarray:
    return self._images()[index]


def _npz_backend(data_cfg) -> "_Backend":
  path = data_cfg.path
  headers = _npz_headers(path)
  names: tuple[str, ...] = ()
  if "class_names" in headers:
    names = tuple(str(n) for n in _npz_array(path, "class_names",
                                             headers["class_names"][1]).reshape(-1))
  present = [s for s in SPLITS if f"{s}_images" in headers or f"{s}_labels" in headers]
  openers = {s: (lambda s=s: NpzSource(path, s, len(names), names, headers)) for s in present}
  return _Backend(path, openers, len(names), names)


# ------------------------------------------------------------------------------ image decoding

def _decode_image(data, channels: int, where: str) -> np.ndarray:
  """Decodes a file path or encoded bytes with PIL to uint8 (H, W, 1 or 3)."""
  from PIL import Image, UnidentifiedImageError  # pylint: disable=import-outside-toplevel
  source = io.BytesIO(data) if isinstance(data, bytes) else data
  try:
    with Image.open(source) as image:
      image.load()
      native = _PIL_MODES.get(image.mode)
      if native is None:
        raise DataError(f"{where} is a {image.mode!r} image, not 8-bit gray or colour: convert "
                        "it to 8-bit (e.g. PIL .convert('L') after scaling to 0..255)")
      target = {1: "L", 3: "RGB"}.get(channels, native)
      array = np.asarray(image if image.mode == target else image.convert(target),
                         dtype=np.uint8)
  except FileNotFoundError:
    raise DataError(f"{where} does not exist: fix the path or remove the row") from None
  except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as e:
    raise DataError(f"{where} cannot be decoded as an image ({e}): replace the file or remove "
                    "its row") from None
  return array[..., None] if array.ndim == 2 else array


def _check_image_shape(image: np.ndarray, expected: tuple[int, ...], image_size: int,
                       where: str, first: str) -> None:
  """Channel counts must match; sizes must match unless data.image_size resizes them."""
  if image.shape[2] != expected[2]:
    raise DataError(f"{where} has {image.shape[2]} channel(s) but {first} has {expected[2]}: "
                    "convert the images to one mode, or set data.channels=1 or 3")
  if image_size <= 0 and image.shape[:2] != tuple(expected[:2]):
    raise DataError(f"{where} is {image.shape[0]}x{image.shape[1]} but {first} is "
                    f"{expected[0]}x{expected[1]}: resize the images to one size, or set "
                    "data.image_size to resize them on loading")


# ------------------------------------------------------------------------------------ folder

def _read_class_names(directory: str) -> tuple[str, ...]:
  path = os.path.join(directory, "classes.txt")
  if not os.path.isfile(path):
    return ()
  with open(path, encoding="utf-8") as f:
    return tuple(line.strip() for line in f if line.strip())


class FolderSource(_Source):
  """One split of an image directory listed by `{split}.csv`; images decode on `load_image`.

  The CSV has a header `path,label[,group...]`; paths are relative to the directory, labels
  are class ids (or names from `classes.txt`), extra columns are integer group ids. Only the
  CSV and the first image are read up front. `channels` (1 or 3) converts every image with
  PIL; 0 keeps the first image's channel count and rejects others.
  """

  def __init__(self, directory: str, split: str, image_size: int = 0, channels: int = 0,
               num_classes: int = 0, class_names: tuple[str, ...] = ()):
    self.directory = directory
    self.csv_path = os.path.join(directory, f"{split}.csv")
    self.image_size, self.channels = int(image_size), int(channels)
    self.paths, labels, groups, self.lines = self._read_csv(class_names)
    self.name = self.csv_path
    first = _decode_image(os.path.join(directory, self.paths[0]), self.channels,
                          f"image {self.paths[0]} ({self.describe(0)})")
    self.first = f"the first image {self.paths[0]}"
    super().__init__(labels, num_classes or _max_label(labels) + 1, first.shape, groups,
                     class_names)

  def _read_csv(self, class_names: tuple[str, ...]):
    by_name = {n: c for c, n in enumerate(class_names)}
    paths, labels, groups, lines = [], [], [], []
    try:
      with open(self.csv_path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = [h.strip() for h in next(reader, [])]
        if header[:2] != ["path", "label"]:
          raise DataError(f"{self.csv_path} line 1 is {header}: the header must be "
                          "'path,label' followed by optional integer group columns")
        for row in reader:
          if not any(cell.strip() for cell in row):
            continue
          where = f"{self.csv_path} line {reader.line_num}"
          if len(row) != len(header):
            raise DataError(f"{where} has {len(row)} fields but the header has {len(header)}")
          label = row[1].strip()
          if label in by_name:
            labels.append(by_name[label])
          else:
            labels.append(_parse_int(label, f"{where} column 'label'",
                                     "use a class id" + (" or a name from classes.txt"
                                                         if by_name else "")))
          groups.append([_parse_int(v.strip(), f"{where} column {h!r}", "use integer group ids")
                         for h, v in zip(header[2:], row[2:])])
          paths.append(row[0].strip())
          lines.append(reader.line_num)
    except FileNotFoundError:
      raise DataError(f"{self.csv_path} does not exist: an image folder needs train.csv (and "
                      "optionally val.csv, test.csv) with a 'path,label' header") from None
    except (UnicodeDecodeError, csv.Error) as e:
      raise DataError(f"{self.csv_path} is not a readable UTF-8 CSV file ({e})") from None
    if not paths:
      raise DataError(f"{self.csv_path} lists no images: add rows 'path,label'")
    group_array = np.asarray(groups, dtype=np.int64) if len(header) > 2 else None
    return paths, np.asarray(labels, dtype=np.int64), group_array, np.asarray(lines)

  def describe(self, index: int) -> str:
    return f"{self.csv_path} line {int(self.lines[index])}"

  def load_image(self, index: int) -> np.ndarray:
    where = f"image {self.paths[index]} ({self.describe(index)})"
    image = _decode_image(os.path.join(self.directory, self.paths[index]), self.channels, where)
    _check_image_shape(image, self.image_shape, self.image_size, where, self.first)
    return image


def _parse_int(text: str, where: str, fix: str) -> int:
  try:
    return int(text)
  except ValueError:
    raise DataError(f"{where} is {text!r}, not an integer: {fix}") from None


def _folder_backend(data_cfg) -> "_Backend":
  directory = data_cfg.path
  if not os.path.isdir(directory):
    raise DataError(f"image folder {directory} does not exist: set data.path to a directory "
                    "with train.csv (and optionally val.csv, test.csv)")
  names = _read_class_names(directory)
  size, channels = int(data_cfg.get("image_size", 0)), int(data_cfg.get("channels", 0))
  present = [s for s in SPLITS
             if s == "train" or os.path.isfile(os.path.join(directory, f"{s}.csv"))]
  openers = {s: (lambda s=s: FolderSource(directory, s, size, channels, len(names), names))
             for s in present}
  return _Backend(directory, openers, len(names), names)


# -------------------------------------------------------------------------------------- tfds

_TFDS_SPLITS = {"train": ("train",), "val": ("validation", "val", "valid"), "test": ("test",)}


class TfdsSource(_Source):
  """One split of a prepared TFDS data set (array_record) with `image` and `label` features.

  Labels are read up front without decoding images; images decode with PIL on `load_image`.
  """

  def __init__(self, builder, split: str, image_size: int = 0, channels: int = 0,
               num_classes: int = 0, class_names: tuple[str, ...] = ()):
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
    self.tfds_name, self.split = builder.info.name, split
    self.name = f"TFDS {builder.info.name} ({builder.data_dir})"
    feature = builder.info.features["image"]
    self.encoded = isinstance(feature, tfds.features.Image)
    decoders = {"image": tfds.decode.SkipDecoding()} if self.encoded else None
    try:
      self.records = builder.as_data_source(split=split, decoders=decoders)
    except (NotImplementedError, ValueError, OSError) as e:
      raise DataError(f"{self.name} split '{split}' cannot be opened for random access ({e}): "
                      "prepare it with file_format=array_record") from None
    self.image_size = int(image_size)
    shape = tuple(feature.shape)
    self.channels = int(channels) or (shape[-1] if shape and shape[-1] in (1, 3) else 0)
    labels = self._read_labels()
    first = self._decode(0)
    self.first = f"the first image of split '{split}'"
    super().__init__(labels, num_classes or _max_label(labels) + 1, first.shape, None,
                     class_names)

  def _read_labels(self, chunk: int = 4096) -> np.ndarray:
    n = len(self.records)
    if n == 0:
      raise DataError(f"{self.name} split '{self.split}' is empty")
    labels = []
    for start in range(0, n, chunk):
      records = self.records.__getitems__(range(start, min(start + chunk, n)))
      labels.extend(int(np.asarray(r["label"])) for r in records)
    return np.asarray(labels, dtype=np.int64)

  def describe(self, index: int) -> str:
    return f"{self.name} split '{self.split}' record {index}"

  def _decode(self, index: int) -> np.ndarray:
    image = self.records[index]["image"]
    if self.encoded:
      return _decode_image(bytes(image), self.channels, f"image of {self.describe(index)}")
    image = np.asarray(image)
    return image[..., None] if image.ndim == 2 else image

  def load_image(self, index: int) -> np.ndarray:
    image = self._decode(index)
    _check_image_shape(image, self.image_shape, self.image_size,
                       f"image of {self.describe(index)}", self.first)
    return image


def _tfds_backend(data_cfg) -> "_Backend":
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  name, data_dir = data_cfg.tfds_name, data_cfg.get("tfds_data_dir", "") or None
  where = f"TFDS data set '{name}' in {data_dir or 'the default TFDS data_dir'}"
  if data_dir and not os.path.isdir(data_dir):
    raise DataError(f"data.tfds_data_dir {data_dir} does not exist: set it to the directory "
                    "holding the prepared TFDS data")
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except Exception as e:  # DatasetNotFoundError and friends; never download
    raise DataError(f"{where} cannot be found ({type(e).__name__}: {str(e).splitlines()[0]}): "
                    "check data.tfds_name and data.tfds_data_dir") from None
  if not builder.is_prepared():
    raise DataError(f"{where} is not prepared at {builder.data_path}: prepare it first "
                    f"(e.g. `tfds build {name} --data_dir=DIR --file_format=array_record`, "
                    "which needs tensorflow); this project never downloads data")
  features = builder.info.features
  missing = [k for k in ("image", "label") if k not in features]
  if missing:
    raise DataError(f"{where} has no feature(s) {missing}; features present: "
                    f"{sorted(features.keys())}. An image classification set is needed")
  names: tuple[str, ...] = ()
  if isinstance(features["label"], tfds.features.ClassLabel):
    names = tuple(features["label"].names)
  size, channels = int(data_cfg.get("image_size", 0)), int(data_cfg.get("channels", 0))
  available = set(builder.info.splits.keys())
  openers = {}
  for split, candidates in _TFDS_SPLITS.items():
    found = next((c for c in candidates if c in available), None)
    if found:
      openers[split] = (lambda found=found: TfdsSource(builder, found, size, channels,
                                                       len(names), names))
  return _Backend(f"TFDS {name} ({builder.data_dir})", openers, len(names), names)


# --------------------------------------------------------------------------------- synthetic

class SyntheticSource(_Source):
  """A sampling sweep (see `synthetic_format`): labels read up front, shards on demand.

  Decoded shards are kept in a small LRU cache, so sequential or shard-local access reads
  each shard once.
  """

  def __init__(self, path: str, cache_shards: int = 4):
    self.directory = synthetic_format.samples_dir(path)
    manifest = synthetic_format.read_manifest(self.directory)
    self.manifest = manifest
    self.shards = [dict(s) for s in manifest["shards"]]
    if not sum(s["count"] for s in self.shards):
      raise DataError(f"{os.path.join(self.directory, synthetic_format.MANIFEST)} lists no "
                      "samples: run the sampling stage to completion first")
    labels, index = zip(*(synthetic_format.read_shard_labels(self.directory, s)
                          for s in self.shards))
    self.offsets = np.cumsum([0] + [s["count"] for s in self.shards])
    self.index = np.concatenate(index)
    self.cache_shards = int(cache_shards)
    super().__init__(np.concatenate(labels), manifest["num_classes"],
                     manifest["image_shape"], None, tuple(manifest.get("class_names") or ()))
    self.name = self.directory
    self._reset()

  def _reset(self) -> None:
    self._lock = threading.Lock()
    self._cache_shards = collections.OrderedDict()

  def _shard(self, index: int) -> tuple[int, int]:
    shard = int(np.searchsorted(self.offsets, index, side="right")) - 1
    return shard, index - int(self.offsets[shard])

  def describe(self, index: int) -> str:
    shard, row = self._shard(index)
    return (f"shard {os.path.join(self.directory, self.shards[shard]['file'])} row {row} "
            f"(sample index {int(self.index[index])})")

  def _images(self, shard: int) -> np.ndarray:
    with self._lock:
      images = self._cache_shards.get(shard)
      if images is not None:
        self._cache_shards.move_to_end(shard)
        return images
    images = synthetic_format.read_shard_images(self.directory, self.shards[shard],
                                                self.image_shape)
    with self._lock:
      self._cache_shards[shard] = images
      while len(self._cache_shards) > self.cache_shards:
        self._cache_shards.popitem(last=False)
    return images

  def load_image(self, index: int) -> np.ndarray:
    shard, row = self._shard(int(index))
    return self._images(shard)[row]


def _synthetic_backend(data_cfg) -> "_Backend":
  source = SyntheticSource(data_cfg.path)
  return _Backend(source.directory, {"train": lambda: source}, source.num_classes,
                  tuple(source.manifest.get("class_names") or ()))


# ------------------------------------------------------------------------------------ digits

def _digits_backend(data_cfg) -> "_Backend":
  del data_cfg
  from sklearn.datasets import load_digits  # pylint: disable=import-outside-toplevel
  digits = load_digits()
  images = np.round(digits.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)[..., None]
  labels = digits.target.astype(np.int64)
  names = tuple(str(c) for c in range(10))
  parts = dict(zip(("train", "val", "test"),
                   imbalance.stratified_holdout(labels, DIGITS_FRACTIONS, SPLIT_SEED)))
  openers = {s: (lambda s=s: ArraySource(images[parts[s]], labels[parts[s]], 10, None, names,
                                         f"scikit-learn digits ({s} split)"))
             for s in SPLITS}
  return _Backend("scikit-learn digits", openers, 10, names)


# ------------------------------------------------------------------------------- open_source

@dataclasses.dataclass
class _Backend:
  """The splits a data set ships with (opened on demand) and the classes it declares."""
  name: str
  openers: dict[str, Callable[[], ImageSource]]
  num_classes: int = 0
  class_names: tuple[str, ...] = ()


_BACKENDS = {"npz": _npz_backend, "folder": _folder_backend, "tfds": _tfds_backend,
             "digits": _digits_backend, "synthetic": _synthetic_backend}


def _max_label(labels: np.ndarray) -> int:
  return int(labels.max()) if labels.size else -1


def _subset(source: ImageSource, indices: np.ndarray) -> ImageSource:
  """A flat SubsetSource (a subset of a subset points at the original)."""
  if isinstance(source, SubsetSource):
    return SubsetSource(source.parent, source.indices[indices])
  return SubsetSource(source, indices)


def _set_classes(source: ImageSource, num_classes: int, names: tuple[str, ...]) -> None:
  """Gives `source` the data set's classes; a label outside them is a DataError."""
  bad = np.flatnonzero((source.labels < 0) | (source.labels >= num_classes))
  if bad.size:
    i = int(bad[0])
    describe = getattr(source, "describe", lambda k: f"{source.name} sample {k}")
    raise DataError(f"{describe(i)} has label {int(source.labels[i])}, outside the "
                    f"{num_classes} classes [0, {num_classes}): fix the label, or set "
                    "data.num_classes to the true number of classes")
  source.num_classes = num_classes
  source.class_names = names or tuple(str(c) for c in range(num_classes))


def _resolve_classes(data_cfg, backend: _Backend, opened: dict) -> tuple[int, tuple[str, ...]]:
  """data.num_classes, else the data set's declared classes, else max label + 1."""
  requested = int(data_cfg.get("num_classes", 0))
  names = backend.class_names
  if requested and names and len(names) != requested:
    raise DataError(f"{backend.name} names {len(names)} classes {list(names)} but "
                    f"data.num_classes={requested}: set data.num_classes=0 or fix the names")
  num_classes = requested or backend.num_classes
  if not num_classes:
    num_classes = max(_max_label(s.labels) for s in opened.values()) + 1
  return num_classes, names


def _check_shapes(opened: dict, data_cfg) -> None:
  """Every opened split must share the train split's channels (and size, unless resized)."""
  train = opened.get("train")
  for split, source in opened.items():
    if train is None or source is train:
      continue
    shape, expected = source.image_shape, train.image_shape
    if int(data_cfg.get("channels", 0)) == 0 and shape[2] != expected[2]:
      raise DataError(f"{source.name} split '{split}' has {shape[2]}-channel images but the "
                      f"train split has {expected[2]}: set data.channels=1 or 3")
    if int(data_cfg.get("image_size", 0)) == 0 and shape[:2] != expected[:2]:
      raise DataError(f"{source.name} split '{split}' has {shape[0]}x{shape[1]} images but the "
                      f"train split has {expected[0]}x{expected[1]}: set data.image_size")


def _long_tail(labels: np.ndarray, num_classes: int, data_cfg, seed: int) -> np.ndarray | None:
  """Indices into `labels` of the long-tailed train subset, or None to keep all."""
  counts = tuple(int(c) for c in data_cfg.get("class_counts", ()) or ())
  ratio = float(data_cfg.get("imbalance_ratio", 0.0) or 0.0)
  if counts:
    if len(counts) != num_classes:
      raise ConfigError(f"config key 'data.class_counts' has {len(counts)} entries but the data "
                        f"has {num_classes} classes: give one count per class")
    return imbalance.long_tail_indices(labels, counts, seed)
  if ratio > 1:
    have = np.bincount(labels, minlength=num_classes)
    return imbalance.long_tail_indices(labels, imbalance.long_tail_counts(have, ratio), seed)
  return None


def open_source(data_cfg, split: str, seed: int = 0) -> ImageSource:
  """Opens `split` of the data set `data_cfg` (config.data) describes; see the module doc."""
  if split not in SPLITS:
    raise ValueError(f"unknown split {split!r}: use one of {', '.join(SPLITS)}")
  kind = data_cfg.get("source", "")
  if kind not in _BACKENDS:
    raise DataError(f"unknown data.source {kind!r}: use one of {', '.join(_BACKENDS)}")
  backend = _BACKENDS[kind](data_cfg)
  if "train" not in backend.openers:
    raise DataError(f"{backend.name} has no train split: every data set needs one")
  carved = [s for s in ("val", "test")
            if s not in backend.openers and float(data_cfg.get(f"{s}_fraction", 0.0)) > 0]
  if split not in backend.openers and split not in carved:
    raise DataError(f"{backend.name} has no {split} split and data.{split}_fraction is 0: set "
                    f"data.{split}_fraction (e.g. 0.1) to hold one out of train, or add the split")
  if sum(float(data_cfg.get(f"{s}_fraction", 0.0)) for s in carved) >= 1:
    raise ConfigError("config keys 'data.val_fraction' + 'data.test_fraction' hold out the "
                      "whole train split: make their sum less than 1")
  declared = int(data_cfg.get("num_classes", 0)) or backend.num_classes
  wanted = set(backend.openers) if not declared else (
      {split} | ({"train"} if split == "train" or split in carved else set()))
  wanted &= set(backend.openers)
  opened = {s: backend.openers[s]() for s in SPLITS if s in wanted}
  num_classes, names = _resolve_classes(data_cfg, backend, opened)
  for source in opened.values():
    _set_classes(source, num_classes, names)
  _check_shapes(opened, data_cfg)
  if split in opened and split != "train":
    return opened[split]

  train = opened["train"]
  parts = dict(zip(["train"] + carved, imbalance.stratified_holdout(
      train.labels, [float(data_cfg.get(f"{s}_fraction")) for s in carved], SPLIT_SEED)))
  if split != "train":
    return _subset(train, parts[split])
  keep = parts["train"]
  counts = np.bincount(train.labels[keep], minlength=num_classes)
  if not counts.all():
    c = int(np.flatnonzero(counts == 0)[0])
    raise DataError(f"class {c} ('{train.class_names[c]}') has no samples in the train split of "
                    f"{backend.name}: add samples of it, or set data.num_classes to the true "
                    "number of classes")
  tail = _long_tail(train.labels[keep], num_classes, data_cfg, seed)
  if tail is not None:
    keep = keep[tail]
  return train if keep.size == len(train) else _subset(train, keep)
