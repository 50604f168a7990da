"""Shared pieces of the sources: the `_Source` base, `ArraySource`, image decoding, `_Backend`."""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import io
import os
import stat
from typing import Callable

import numpy as np

from jaxsynth.data.base import ImageSource
from jaxsynth.errors import DataError

#: Seed of every fixed split (holdouts, digits): independent of the run seed on purpose.
SPLIT_SEED = 0
#: PIL modes decoded as 8-bit gray ("L") or RGB; alpha channels are dropped.
_PIL_MODES = {"1": "L", "L": "L", "LA": "L", "P": "RGB", "PA": "RGB", "RGB": "RGB",
              "RGBA": "RGB", "RGBX": "RGB", "CMYK": "RGB", "YCbCr": "RGB", "LAB": "RGB",
              "HSV": "RGB"}


def check_path(path: str, kind: str, what: str, fix: str) -> None:
  """Raises DataError unless `path` is a readable `kind` ("file" or "directory").

  The message names `what` and `path` and says what is wrong (missing, a broken symlink or a
  symlink loop, the other kind, no read permission), then `fix`.
  """
  try:
    is_dir = stat.S_ISDIR(os.stat(path).st_mode)
  except OSError as e:
    if e.errno == errno.ELOOP:
      raise DataError(f"{what} {path} is a symlink loop ({e.strerror}): remove or fix the "
                      f"link, or {fix}") from None
    if os.path.lexists(path):
      raise DataError(f"{what} {path} is a broken symlink ({e.strerror}): fix the link, or "
                      f"{fix}") from None
    if e.errno == errno.ENOTDIR:
      raise DataError(f"{what} {path} does not exist (a parent of it is a file): {fix}") from None
    raise DataError(f"{what} {path} does not exist: {fix}") from None
  if kind == "file" and is_dir:
    raise DataError(f"{what} {path} is a directory, not a file: {fix}")
  if kind == "directory" and not is_dir:
    raise DataError(f"{what} {path} is a file, not a directory: {fix}")
  mode = os.R_OK | (os.X_OK if kind == "directory" else 0)
  if not os.access(path, mode):
    raise DataError(f"{what} {path} cannot be read (permission denied): fix its permissions "
                    f"(e.g. chmod -R a+rX), or {fix}")


class _Source(ImageSource):
  """An ImageSource that names where sample i comes from and pickles without locks/caches."""

  def describe(self, index: int) -> str:
    """Where sample `index` lives, for error messages."""
    return f"{self.name} sample {index}"

  def check_files(self) -> None:
    """Checks up front what `load_image` would only meet later (no-op for in-memory sources)."""

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


@contextlib.contextmanager
def _opened_image(source, where: str, verb: str):
  """PIL's Image.open(source); a missing, unreadable or undecodable file is one DataError."""
  from PIL import Image, UnidentifiedImageError  # pylint: disable=import-outside-toplevel
  try:
    with Image.open(source) as image:
      yield image
  except FileNotFoundError:
    raise DataError(f"{where} does not exist: fix the path or remove the row") from None
  except PermissionError:
    raise DataError(f"{where} cannot be read (permission denied): fix its permissions (e.g. "
                    "chmod a+r) or remove its row") from None
  except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as e:
    raise DataError(f"{where} cannot be {verb} ({e}): replace the file or remove its row") from None


def _target_mode(mode: str, channels: int, where: str) -> str:
  """The PIL mode an image of `mode` is converted to for `data.channels` = channels."""
  native = _PIL_MODES.get(mode)
  if native is None:
    raise DataError(f"{where} is a {mode!r} image, not 8-bit gray or colour: convert "
                    "it to 8-bit (e.g. PIL .convert('L') after scaling to 0..255)")
  return {1: "L", 3: "RGB"}.get(channels, native)


def _decode_image(data, channels: int, where: str) -> np.ndarray:
  """Decodes a file path or encoded bytes with PIL to uint8 (H, W, 1 or 3)."""
  source = io.BytesIO(data) if isinstance(data, bytes) else data
  with _opened_image(source, where, "decoded as an image") as image:
    image.load()
    target = _target_mode(image.mode, channels, where)
    array = np.asarray(image if image.mode == target else image.convert(target), dtype=np.uint8)
  return array[..., None] if array.ndim == 2 else array


def _check_shape(shape: tuple[int, ...], expected: tuple[int, ...], image_size: int,
                 where: str, first: str) -> None:
  """Channel counts must match; sizes must match unless data.image_size resizes them."""
  if shape[2] != expected[2]:
    raise DataError(f"{where} has {shape[2]} channel(s) but {first} has {expected[2]}: "
                    "convert the images to one mode, or set data.channels=1 or 3")
  if image_size <= 0 and tuple(shape[:2]) != tuple(expected[:2]):
    raise DataError(f"{where} is {shape[0]}x{shape[1]} but {first} is "
                    f"{expected[0]}x{expected[1]}: resize the images to one size, or set "
                    "data.image_size to resize them on loading")


def _image_header(path: str, channels: int, where: str) -> tuple[int, int, int]:
  """(H, W, C) of an image file as `_decode_image` would return it, from its header only."""
  with _opened_image(path, where, "read as an image") as image:
    target = _target_mode(image.mode, channels, where)
    width, height = image.size
  return height, width, 1 if target == "L" else 3


@dataclasses.dataclass
class _Backend:
  """The splits a data set ships with (opened on demand) and the classes it declares."""
  name: str
  openers: dict[str, Callable[[], ImageSource]]
  num_classes: int = 0
  class_names: tuple[str, ...] = ()


def _max_label(labels: np.ndarray) -> int:
  return int(labels.max()) if labels.size else -1
