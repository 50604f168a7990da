"""The random-access image source interface every data source implements."""

from __future__ import annotations

import abc

import numpy as np

SPLITS = ("train", "val", "test")


class ImageSource(abc.ABC):
  """A random-access data set of labelled uint8 images (a grain `RandomAccessDataSource`).

  `source[i]` returns `{"image": uint8 (H, W, C), "label": int64 scalar}` plus
  `"group": int64 (G,)` when the source has group attributes. Labels are known up front
  (`labels`) so that class counts and balanced samplers never decode an image.

  `groups` is None, (N,) or (N, G) (G sensitive attributes per sample); "the group id" of a
  sample, which group-conditioned generators and per-group metrics use, is column 0 (see
  `group_ids`). `group_names` optionally names the group ids (as `class_names` the classes).
  """

  #: Human-readable origin (file or directory) used in error messages.
  name: str = ""
  #: True for a val/test split that `open_source` held out of train (the data set lacks it).
  held_out: bool = False

  def __init__(self, labels: np.ndarray, num_classes: int, image_shape: tuple[int, int, int],
               groups: np.ndarray | None = None, class_names: tuple[str, ...] = (),
               group_names: tuple[str, ...] = ()):
    self.labels = np.asarray(labels, dtype=np.int64)
    self.num_classes = int(num_classes)
    self.image_shape = tuple(int(d) for d in image_shape)
    self.groups = None if groups is None else np.asarray(groups, dtype=np.int64)
    self.class_names = tuple(class_names) or tuple(str(c) for c in range(self.num_classes))
    self.group_names = tuple(str(n) for n in group_names)

  def __len__(self) -> int:
    return int(self.labels.shape[0])

  @abc.abstractmethod
  def load_image(self, index: int) -> np.ndarray:
    """Returns image `index` as uint8 (H, W, C)."""

  def __getitem__(self, index: int) -> dict:
    index = int(index)
    if not 0 <= index < len(self):
      raise IndexError(f"index {index} out of range for {self.name or type(self).__name__} "
                       f"of {len(self)} samples")
    record = {"image": self.load_image(index), "label": self.labels[index]}
    if self.groups is not None:
      record["group"] = self.groups[index]
    return record

  def class_counts(self) -> np.ndarray:
    """Number of samples of each class, shape (num_classes,)."""
    return np.bincount(self.labels, minlength=self.num_classes)


class SubsetSource(ImageSource):
  """A view of `parent` restricted to the given indices (no image is copied)."""

  def __init__(self, parent: ImageSource, indices: np.ndarray):
    indices = np.asarray(indices, dtype=np.int64)
    super().__init__(parent.labels[indices], parent.num_classes, parent.image_shape,
                     None if parent.groups is None else parent.groups[indices],
                     parent.class_names, getattr(parent, "group_names", ()))
    self.parent = parent
    self.indices = indices
    self.name = parent.name

  def load_image(self, index: int) -> np.ndarray:
    return self.parent.load_image(int(self.indices[index]))


class RelabelledSource(ImageSource):
  """`parent`'s images (and groups) under other labels, e.g. a generator's condition ids."""

  def __init__(self, parent: ImageSource, labels: np.ndarray, num_classes: int,
               class_names: tuple[str, ...] = ()):
    labels = np.asarray(labels, dtype=np.int64)
    if labels.shape != (len(parent),):
      raise ValueError(f"{labels.shape[0]} labels for the {len(parent)} samples of "
                       f"{parent.name}")
    super().__init__(labels, num_classes, parent.image_shape, parent.groups, class_names,
                     getattr(parent, "group_names", ()))
    self.parent = parent
    self.name = parent.name
    self.held_out = parent.held_out

  def load_image(self, index: int) -> np.ndarray:
    return self.parent.load_image(index)

  def describe(self, index: int) -> str:
    """Where sample `index` lives (the parent's description)."""
    describe = getattr(self.parent, "describe", None)
    return describe(index) if describe else f"{self.name} sample {index}"


def group_ids(source: ImageSource) -> np.ndarray | None:
  """The group id of every sample, int64 (N,): column 0 of (N, G) groups; None without groups."""
  groups = getattr(source, "groups", None)
  if groups is None:
    return None
  groups = np.asarray(groups, dtype=np.int64)
  return groups.reshape(groups.shape[0], -1)[:, 0] if groups.ndim > 1 else groups


def num_groups(source: ImageSource) -> int:
  """How many group ids the data set has: len(group_names), else max id + 1; 0 without groups.

  The max is taken over the split's whole data set (a subset's parent), so the train split, a
  long-tailed subset of it and the splits held out of it agree.
  """
  names = tuple(getattr(source, "group_names", ()) or ())
  if names:
    return len(names)
  base = source
  while getattr(base, "parent", None) is not None:
    base = base.parent
  ids = group_ids(base)
  if ids is None:
    return 0
  return int(ids.max()) + 1 if ids.size else 0
