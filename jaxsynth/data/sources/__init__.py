"""Concrete image sources (npz, folder + CSV, TFDS, synthetic sweeps, digits) and `open_source`.

`open_source(config.data, split, seed)` opens one split of the configured data set. Splits a
data set lacks (val/test of a synthetic set, a folder without `val.csv`, ...) are held out of
its train split, stratified by class with a fixed seed, so they never change between runs.
The train split is then long-tailed with the run seed when `data.class_counts` or
`data.imbalance_ratio` asks for it. Images are decoded lazily except for `digits`.

`check_data(config.data, splits, seed)` is what a run calls before it writes anything: it opens
the splits and checks up front what lazy reading would only meet in the middle of a run (every
folder image's header, every synthetic shard's header) and that each held-out split has every
class.
"""

from __future__ import annotations

import numpy as np

from jaxsynth.data import imbalance
from jaxsynth.data.base import SPLITS, ImageSource, SubsetSource
from jaxsynth.data.sources.common import SPLIT_SEED, ArraySource, _Backend, _max_label
from jaxsynth.data.sources.digits import DIGITS_FRACTIONS, _digits_backend
from jaxsynth.data.sources.folder import FolderSource, _folder_backend
from jaxsynth.data.sources.npz import NpzSource, _npz_backend
from jaxsynth.data.sources.synthetic import SyntheticSource, _synthetic_backend
from jaxsynth.data.sources.tfds import TfdsSource, _tfds_backend
from jaxsynth.errors import ConfigError, DataError

_BACKENDS = {"npz": _npz_backend, "folder": _folder_backend, "tfds": _tfds_backend,
             "digits": _digits_backend, "synthetic": _synthetic_backend}


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
    held = _subset(train, parts[split])
    held.held_out = True
    return held
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


def check_data(data_cfg, splits, seed: int = 0, every_class: bool = True) -> dict:
  """Opens `splits` and checks their files up front (see the module doc); {split: source}.

  With `every_class`, a split held out of train must hold every class (a class with too few
  samples to stratify would be missing from val or test, and its metrics with it).
  """
  opened, checked = {}, set()
  for split in dict.fromkeys(splits):
    source = opened[split] = open_source(data_cfg, split, seed)
    base = getattr(source, "parent", source)
    key = (type(base).__name__, base.name)
    if key not in checked:
      checked.add(key)
      getattr(base, "check_files", lambda: None)()
    counts = source.class_counts()
    if every_class and source.held_out and not counts.all():
      c = int(np.flatnonzero(counts == 0)[0])
      fraction = float(data_cfg.get(f"{split}_fraction", 0.0))
      total = int(np.sum(base.labels == c))
      raise DataError(f"class {c} ('{source.class_names[c]}') has {total} sample(s) in "
                      f"{source.name}: too few to hold out a {split} split by class "
                      f"(data.{split}_fraction={fraction:g}), which would have none of it; add "
                      f"samples of it, or give the data set its own {split} split")
  if "train" in opened:  # every split must fit the model built for the train split's images
    _check_shapes(opened, data_cfg)
  return opened
