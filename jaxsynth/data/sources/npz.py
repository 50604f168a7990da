"""MedMNIST-style .npz files: `NpzSource` and the npz backend."""

from __future__ import annotations

import os
import threading
import weakref
import zipfile

import numpy as np

from jaxsynth.data.base import SPLITS
from jaxsynth.data.sources.common import _Backend, _max_label, _Source, check_path
from jaxsynth.errors import DataError

_NPZ_ARRAYS: weakref.WeakValueDictionary = weakref.WeakValueDictionary()


def _npz_headers(path: str) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
  """Shape and dtype of every array in an .npz file, read from the headers only."""
  check_path(path, "file", "data file", "set data.path to a MedMNIST-style .npz with "
             "{train,val,test}_images and _labels")
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
  except PermissionError:
    raise DataError(f"data file {path} cannot be read (permission denied): fix its permissions "
                    "(e.g. chmod a+r)") from None
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
               class_names: tuple[str, ...] = (), headers: dict | None = None,
               group_names: tuple[str, ...] = ()):
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
                     class_names, group_names)
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


def _npz_names(path: str, key: str, headers: dict) -> tuple[str, ...]:
  """The strings of an optional names array (`class_names`, `group_names`); () if absent."""
  if key not in headers:
    return ()
  return tuple(str(n) for n in _npz_array(path, key, headers[key][1]).reshape(-1))


def _npz_backend(data_cfg) -> "_Backend":
  path = data_cfg.path
  headers = _npz_headers(path)
  names, group_names = (_npz_names(path, key, headers) for key in ("class_names", "group_names"))
  # train is always opened, so a file without it names the keys it has (NpzSource's error).
  present = [s for s in SPLITS
             if s == "train" or f"{s}_images" in headers or f"{s}_labels" in headers]
  openers = {s: (lambda s=s: NpzSource(path, s, len(names), names, headers, group_names))
             for s in present}
  return _Backend(path, openers, len(names), names)
