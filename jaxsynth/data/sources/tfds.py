"""Prepared TFDS data sets (array_record): `TfdsSource` and the tfds backend."""

from __future__ import annotations

import os

import numpy as np

from jaxsynth.data.sources.common import (_Backend, _check_shape, _decode_image,
                                          _max_label, _Source)
from jaxsynth.errors import DataError

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
    _check_shape(image.shape, self.image_shape, self.image_size,
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
