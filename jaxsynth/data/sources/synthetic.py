"""Synthetic sampling sweeps (see `synthetic_format`): `SyntheticSource` and its backend."""

from __future__ import annotations

import collections
import os
import threading

import numpy as np

from jaxsynth.data import synthetic_format
from jaxsynth.data.sources.common import _Backend, _Source
from jaxsynth.data.sources.npz import _npz_headers
from jaxsynth.errors import DataError


class SyntheticSource(_Source):
  """A sampling sweep (see `synthetic_format`): labels read up front, shards on demand.

  A sweep whose manifest has `num_groups` (a group-conditioned generator's) also gives its
  shards' `groups` as `.groups` int64 (N,) and the manifest's `group_names`. Decoded shards
  are kept in a small LRU cache, so sequential or shard-local access reads each shard once.
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
    groups = None
    if manifest.get("num_groups"):
      groups = np.concatenate([synthetic_format.read_shard_groups(
          self.directory, s, manifest["num_groups"]) for s in self.shards])
    super().__init__(np.concatenate(labels), manifest["num_classes"],
                     manifest["image_shape"], groups, tuple(manifest.get("class_names") or ()),
                     tuple(manifest.get("group_names") or ()))
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

  def check_files(self) -> None:
    """Reads the `images` header of every shard: uint8 (count, *image_shape) as listed."""
    for entry in self.shards:
      path = os.path.join(self.directory, entry["file"])
      header = _npz_headers(path).get("images")
      expected = (entry["count"], *self.image_shape)
      if header is None or header[1] != np.uint8 or tuple(header[0]) != expected:
        found = "no key 'images'" if header is None else f"'images' {header[1]} {header[0]}"
        raise DataError(f"shard {path} has {found}, but {synthetic_format.MANIFEST} says uint8 "
                        f"{expected}: delete the shard and re-run the sampling stage")

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
