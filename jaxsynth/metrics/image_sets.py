"""The image sets generation metrics compare, read from any of the places they live.

`load_set(path, split)` reads
  - an `.npz` of images: `images` or `{split}_images` (uint8 N,H,W,C), with `labels` /
    `{split}_labels`, optional `groups` / `{split}_groups`, `class_names`, `group_names`;
  - an `.npz` of saved statistics (`mu`, `sigma`, pytorch-fid's format, plus per-class stats);
  - a sweep: a `samples/` folder (manifest.json + shards) or a sampling run's workdir;
  - an image folder listed by `{split}.csv` (`path,label[,group]`, as `data.source=folder`).
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from jaxsynth.data import synthetic_format
from jaxsynth.data.base import SPLITS, group_ids
from jaxsynth.errors import DataError


@dataclasses.dataclass
class ImageSet:
  """Images with their labels and groups (None when the set has none), or saved statistics."""
  name: str
  images: np.ndarray | None = None          # uint8 (N, H, W, C)
  labels: np.ndarray | None = None          # int64 (N,)
  groups: np.ndarray | None = None          # int64 (N,)
  class_names: tuple[str, ...] = ()
  group_names: tuple[str, ...] = ()
  index: np.ndarray | None = None           # a sweep's global sample indices
  stats: dict | None = None                 # load_stats' dict, for a statistics file

  def __len__(self) -> int:
    return 0 if self.images is None else int(self.images.shape[0])


def _names(arrays, key: str) -> tuple[str, ...]:
  return tuple(str(n) for n in arrays[key].tolist()) if key in arrays else ()


def _npz(path: str, split: str | None) -> ImageSet:
  try:
    arrays = np.load(path, allow_pickle=False)
  except (OSError, ValueError) as e:
    raise DataError(f"{path} is not a readable .npz file ({e}): give an .npz of images or "
                    "saved statistics, a sweep folder or an image folder") from None
  with arrays:
    keys = set(arrays.files)
    if "mu" in keys and "sigma" in keys and "images" not in keys:
      from jaxsynth.metrics import generation  # pylint: disable=import-outside-toplevel
      return ImageSet(path, stats=generation.load_stats(path))
    splits = [s for s in SPLITS if f"{s}_images" in keys]
    if split:
      prefix = f"{split}_"
      if f"{split}_images" not in keys:
        if "images" in keys and not splits:
          prefix = ""
        else:
          raise DataError(f"{path} has no key '{split}_images' (--split {split}); its splits are "
                          f"{splits or 'none'}: pass one of them")
    elif "images" in keys:
      prefix = ""
    elif len(splits) == 1:
      prefix = f"{splits[0]}_"
    elif splits:
      raise DataError(f"{path} holds the splits {', '.join(splits)}: pick one with --split, "
                      "e.g. --split train")
    else:
      raise DataError(f"{path} has no 'images' or '{{split}}_images' key (keys: "
                      f"{sorted(keys)[:8]}): give an .npz of uint8 images (N, H, W, C)")
    images = arrays[f"{prefix}images"]
    labels = arrays[f"{prefix}labels"] if f"{prefix}labels" in keys else None
    groups = arrays[f"{prefix}groups"] if f"{prefix}groups" in keys else None
    out = ImageSet(f"{path}:{prefix[:-1]}" if prefix else path, images, labels, groups,
                   _names(arrays, "class_names"), _names(arrays, "group_names"))
  return _checked(out)


def _sweep(directory: str) -> ImageSet:
  from jaxsynth.data.sources.synthetic import SyntheticSource  # pylint: disable=import-outside-toplevel
  source = SyntheticSource(directory)
  images = [synthetic_format.read_shard_images(source.directory, entry, source.image_shape)
            for entry in source.shards]
  return _checked(ImageSet(source.directory, np.concatenate(images), source.labels,
                           source.groups, tuple(source.manifest.get("class_names") or ()),
                           source.group_names, source.index))


def _folder(directory: str, split: str | None) -> ImageSet:
  from jaxsynth.data.sources.folder import FolderSource  # pylint: disable=import-outside-toplevel
  present = [s for s in SPLITS if os.path.isfile(os.path.join(directory, f"{s}.csv"))]
  if split is None:
    if len(present) != 1:
      raise DataError(f"{directory} has the split lists {[f'{s}.csv' for s in present]}: pick "
                      "one with --split" if present else
                      f"{directory} holds no samples/manifest.json and no {{split}}.csv: give a "
                      "sweep folder, an image folder with train.csv, or an .npz")
    split = present[0]
  elif split not in present:
    raise DataError(f"{directory} has no {split}.csv (--split {split}); it has "
                    f"{[f'{s}.csv' for s in present] or 'none'}")
  source = FolderSource(directory, split)
  images = np.stack([source.load_image(i) for i in range(len(source))])
  groups = group_ids(source)
  return _checked(ImageSet(source.csv_path, images, source.labels, groups,
                           tuple(source.class_names)))


def _checked(image_set: ImageSet) -> ImageSet:
  images, where = image_set.images, image_set.name
  if images.dtype != np.uint8 or images.ndim not in (3, 4):
    raise DataError(f"{where}: images are {images.dtype} {images.shape}; give uint8 images "
                    "(N, H, W, C) or (N, H, W)")
  if images.ndim == 3:
    image_set.images = images = images[..., None]
  if images.shape[-1] not in (1, 3):
    raise DataError(f"{where}: images have {images.shape[-1]} channels; give 1 (gray) or 3 (RGB)")
  for key in ("labels", "groups"):
    value = getattr(image_set, key)
    if value is None:
      continue
    value = np.asarray(value)
    if value.shape != (images.shape[0],) or not np.issubdtype(value.dtype, np.integer):
      raise DataError(f"{where}: {key} are {value.dtype} {value.shape}, but there are "
                      f"{images.shape[0]} images; give one integer per image")
    if value.size and value.min() < 0:
      raise DataError(f"{where}: {key} hold negative ids ({int(value.min())}): use ids >= 0")
    setattr(image_set, key, value.astype(np.int64))
  return image_set


def load_set(path: str, split: str | None = None) -> ImageSet:
  """The images (or statistics) at `path`; `split` picks `{split}_*` keys or `{split}.csv`."""
  if not os.path.exists(path):
    raise DataError(f"{path} does not exist: give an .npz of images or statistics, a sweep "
                    "folder (samples/ or its workdir) or an image folder with {split}.csv")
  if os.path.isdir(path):
    for candidate in (path, os.path.join(path, synthetic_format.SAMPLES_DIR)):
      if os.path.isfile(os.path.join(candidate, synthetic_format.MANIFEST)):
        return _sweep(candidate)
    return _folder(path, split)
  return _npz(path, split)


def from_source(source, image_shape=None) -> ImageSet:
  """Every image of a data source (an ImageSource), converted to `image_shape` when given."""
  from jaxsynth.data import augment  # pylint: disable=import-outside-toplevel
  images = [source.load_image(i) for i in range(len(source))]
  if image_shape is not None:
    h, w, c = image_shape
    images = [augment.convert_channels(image, c) for image in images]
    images = [image if image.shape[:2] == (h, w) else augment.resize(image, h)
              for image in images]
  stacked = np.stack(images) if images else np.zeros((0, *(image_shape or (1, 1, 1))), np.uint8)
  return _checked(ImageSet(source.name, stacked, source.labels, group_ids(source),
                           tuple(source.class_names), tuple(getattr(source, "group_names", ()))))
