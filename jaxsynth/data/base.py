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
  """

  #: Human-readable origin (file or directory) used in error messages.
  name: str = ""
  #: True for a val/test split that `open_source` held out of train (the data set lacks it).
  held_out: bool = False

  def __init__(self, labels: np.ndarray, num_classes: int, image_shape: tuple[int, int, int],
               groups: np.ndarray | None = None, class_names: tuple[str, ...] = ()):
    self.labels = np.asarray(labels, dtype=np.int64)
    self.num_classes = int(num_classes)
    self.image_shape = tuple(int(d) for d in image_shape)
    self.groups = None if groups is None else np.asarray(groups, dtype=np.int64)
    self.class_names = tuple(class_names) or tuple(str(c) for c in range(self.num_classes))

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
                     parent.class_names)
    self.parent = parent
    self.indices = indices
    self.name = parent.name

  def load_image(self, index: int) -> np.ndarray:
    return self.parent.load_image(int(self.indices[index]))
