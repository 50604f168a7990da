"""Image folders listed by `{split}.csv`: `FolderSource` and the folder backend."""

from __future__ import annotations

import csv
import os

import numpy as np

from jaxsynth.data.base import SPLITS
from jaxsynth.data.sources.common import (_Backend, _check_shape,
                                          _decode_image, _image_header, _max_label, _Source,
                                          check_path)
from jaxsynth.errors import DataError


def _read_class_names(directory: str) -> tuple[str, ...]:
  path = os.path.join(directory, "classes.txt")
  if not os.path.lexists(path):
    return ()
  check_path(path, "file", "class-name file", "make it a text file with one class name per "
             "line, or remove it")
  try:
    with open(path, encoding="utf-8") as f:
      return tuple(line.strip() for line in f if line.strip())
  except (OSError, UnicodeDecodeError) as e:
    raise DataError(f"class-name file {path} cannot be read ({e}): make it a UTF-8 text file "
                    "with one class name per line, or remove it") from None


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
    except OSError as e:  # permission denied, a directory, a symlink loop
      raise DataError(f"{self.csv_path} cannot be read ({e.strerror}): make it a readable CSV "
                      "file with a 'path,label' header (check its permissions)") from None
    except (UnicodeDecodeError, csv.Error) as e:
      raise DataError(f"{self.csv_path} is not a readable UTF-8 CSV file ({e})") from None
    if not paths:
      raise DataError(f"{self.csv_path} lists no images: add rows 'path,label'")
    group_array = np.asarray(groups, dtype=np.int64) if len(header) > 2 else None
    return paths, np.asarray(labels, dtype=np.int64), group_array, np.asarray(lines)

  def describe(self, index: int) -> str:
    return f"{self.csv_path} line {int(self.lines[index])}"

  def check_files(self) -> None:
    """Reads the header of every listed image: each must exist, be readable and 8-bit, and
    share the first image's channels (and size, unless data.image_size resizes)."""
    for index, rel in enumerate(self.paths):
      where = f"image {rel} ({self.describe(index)})"
      shape = _image_header(os.path.join(self.directory, rel), self.channels, where)
      _check_shape(shape, self.image_shape, self.image_size, where, self.first)

  def load_image(self, index: int) -> np.ndarray:
    where = f"image {self.paths[index]} ({self.describe(index)})"
    image = _decode_image(os.path.join(self.directory, self.paths[index]), self.channels, where)
    _check_shape(image.shape, self.image_shape, self.image_size, where, self.first)
    return image


def _parse_int(text: str, where: str, fix: str) -> int:
  try:
    return int(text)
  except ValueError:
    raise DataError(f"{where} is {text!r}, not an integer: {fix}") from None


def _folder_backend(data_cfg) -> "_Backend":
  directory = data_cfg.path
  check_path(directory, "directory", "image folder", "set data.path to a directory with "
             "train.csv (and optionally val.csv, test.csv)")
  names = _read_class_names(directory)
  size, channels = int(data_cfg.get("image_size", 0)), int(data_cfg.get("channels", 0))
  present = [s for s in SPLITS
             if s == "train" or os.path.lexists(os.path.join(directory, f"{s}.csv"))]
  openers = {s: (lambda s=s: FolderSource(directory, s, size, channels, len(names), names))
             for s in present}
  return _Backend(directory, openers, len(names), names)
