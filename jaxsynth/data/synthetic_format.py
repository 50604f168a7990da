"""The on-disk format of a sampling sweep (GUIDE section 7): read, validate and write it.

A sweep directory (`WORKDIR/samples/`) holds `manifest.json` and shards `shard-NNNNN.npz`.

`manifest.json` is a JSON object with these keys (readers ignore any others, so the sampler
may add its settings, progress or provenance):

  num_classes   int > 0; every label lies in [0, num_classes)
  image_shape   [H, W, C]; the shape of every image
  shards        [{"file": "shard-00000.npz", "count": N, "sha256": HEX}, ...]: the finished
                shards in sample order; `file` is relative to the directory, `count` its number
                of samples, `sha256` (optional) the digest of the file's bytes
  class_names   optional list of num_classes strings
  num_groups    optional int > 0: the shards also hold `groups`, every id in [0, num_groups)
  group_names   optional list of num_groups strings
  condition     optional: what the generator was conditioned on (class | group | class_group;
                see data/conditions.py)

Each shard is an uncompressed, pickle-free .npz with `images` uint8 (N, H, W, C), `labels`
int64 (N,) and `index` int64 (N,), the global sample index, and `groups` int64 (N,) when the
manifest has num_groups. A shard is written once to a
temporary name and renamed into place; a finished shard never changes. Readers check a listed
shard's bytes against its `sha256`, so a truncated or damaged shard is never read as data.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import zipfile

import numpy as np

from jaxsynth import files
from jaxsynth.errors import DataError

MANIFEST = "manifest.json"
SAMPLES_DIR = "samples"
REQUIRED_KEYS = ("num_classes", "image_shape", "shards")
QUARANTINE = "quarantine"   # damaged shards are moved here, out of the sweep


def shard_filename(shard_id: int) -> str:
  """The file name of shard `shard_id`, e.g. `shard-00003.npz`."""
  return f"shard-{int(shard_id):05d}.npz"


def samples_dir(path: str) -> str:
  """The sweep directory of `path`: itself if it holds a manifest, else `path/samples`."""
  if os.path.isfile(os.path.join(path, MANIFEST)):
    return path
  nested = os.path.join(path, SAMPLES_DIR)
  if os.path.isfile(os.path.join(nested, MANIFEST)):
    return nested
  if not os.path.isdir(path):
    raise DataError(f"synthetic data directory {path} does not exist: set data.path to a "
                    f"workdir of a sampling run or to its {SAMPLES_DIR}/ folder")
  raise DataError(f"no {MANIFEST} in {path} or {nested}: set data.path to a workdir of a "
                  f"finished sampling run or to its {SAMPLES_DIR}/ folder")


def quarantine(directory: str, path: str) -> str:
  """Moves a damaged shard to `directory/quarantine/` (kept for inspection); returns where."""
  target_dir = os.path.join(directory, QUARANTINE)
  os.makedirs(target_dir, exist_ok=True)
  target = os.path.join(target_dir, os.path.basename(path))
  k = 1
  while os.path.exists(target):
    k += 1
    target = os.path.join(target_dir, f"{os.path.basename(path)}.{k}")
  os.rename(path, target)
  return target


def write_shard(directory: str, shard_id: int, images, labels, index,
                overwrite: bool = False, groups=None) -> dict:
  """Writes one shard atomically (with `groups` when given); returns its manifest entry
  `{"file", "count", "sha256"}`."""
  images = np.asarray(images)
  labels = np.asarray(labels)
  index = np.asarray(index)
  if images.dtype != np.uint8 or images.ndim != 4:
    raise DataError(f"shard {shard_id}: images must be uint8 (N, H, W, C), "
                    f"got {images.dtype} {images.shape}")
  n = images.shape[0]
  integers = (("labels", labels), ("index", index))
  if groups is not None:
    groups = np.asarray(groups)
    integers += (("groups", groups),)
  for key, array in integers:
    if array.shape != (n,) or not np.issubdtype(array.dtype, np.integer):
      raise DataError(f"shard {shard_id}: {key} must be integers of shape ({n},), "
                      f"got {array.dtype} {array.shape}")
  os.makedirs(directory, exist_ok=True)
  name = shard_filename(shard_id)
  path = os.path.join(directory, name)
  if os.path.exists(path) and not overwrite:
    raise DataError(f"shard {path} already exists and a finished shard never changes: "
                    "skip it, or pass overwrite=True")
  arrays = shard_arrays(images, labels, index, groups)
  data = npz_bytes(arrays)
  files.atomic_write(path, data, fault="shard.before_rename")
  return {"file": name, "count": int(n), "sha256": hashlib.sha256(data).hexdigest()}


def shard_arrays(images, labels, index, groups=None) -> dict:
  """The arrays of a shard in the order they are written (`groups` only when given)."""
  arrays = {"images": images, "labels": np.asarray(labels).astype(np.int64),
            "index": np.asarray(index).astype(np.int64)}
  if groups is not None:
    arrays["groups"] = np.asarray(groups).astype(np.int64)
  return arrays


def npz_bytes(arrays: dict) -> bytes:
  """np.savez's format (stored, zip64), but with a fixed timestamp: equal arrays, equal bytes."""
  buffer = io.BytesIO()
  with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
    for key, array in arrays.items():
      info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
      with archive.open(info, "w", force_zip64=True) as member:
        np.lib.format.write_array(member, np.ascontiguousarray(array), allow_pickle=False)
  return buffer.getvalue()


def validate_manifest(manifest: dict, where: str) -> dict:
  """Raises DataError naming `where` and the key unless `manifest` has the fields above."""
  if not isinstance(manifest, dict):
    raise DataError(f"{where} must hold a JSON object, got {type(manifest).__name__}")
  missing = [k for k in REQUIRED_KEYS if k not in manifest]
  if missing:
    raise DataError(f"{where} lacks key(s) {missing}; keys present: {sorted(manifest)}. "
                    f"A sweep manifest needs {list(REQUIRED_KEYS)}")
  num_classes, shape, shards = (manifest[k] for k in REQUIRED_KEYS)
  if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
    raise DataError(f"{where} key 'num_classes' is {num_classes!r}: use a positive integer")
  if (not isinstance(shape, (list, tuple)) or len(shape) != 3
      or not all(isinstance(d, int) and d > 0 for d in shape)):
    raise DataError(f"{where} key 'image_shape' is {shape!r}: use [H, W, C] positive integers")
  if not isinstance(shards, (list, tuple)):
    raise DataError(f"{where} key 'shards' must be a list of {{'file', 'count'}} objects")
  for k, entry in enumerate(shards):
    if (not isinstance(entry, dict) or not isinstance(entry.get("file"), str)
        or not isinstance(entry.get("count"), int) or entry["count"] < 0
        or not isinstance(entry.get("sha256", ""), str)):
      raise DataError(f"{where} key 'shards' entry {k} is {entry!r}: use "
                      '{"file": "shard-00000.npz", "count": N, "sha256": HEX (optional)}')
  names = manifest.get("class_names")
  if names is not None and (not isinstance(names, (list, tuple)) or len(names) != num_classes):
    raise DataError(f"{where} key 'class_names' must list {num_classes} names, got {names!r}")
  groups = manifest.get("num_groups")
  if groups is not None and (not isinstance(groups, int) or isinstance(groups, bool)
                             or groups < 1):
    raise DataError(f"{where} key 'num_groups' is {groups!r}: use a positive integer (the "
                    "shards then hold 'groups'), or drop the key")
  names = manifest.get("group_names")
  if names is not None and (groups is None or not isinstance(names, (list, tuple))
                            or len(names) != groups):
    raise DataError(f"{where} key 'group_names' must list num_groups ({groups}) names, got "
                    f"{names!r}")
  return manifest


def write_manifest(directory: str, manifest: dict) -> str:
  """Validates `manifest` and writes `directory/manifest.json` atomically; returns its path."""
  path = os.path.join(directory, MANIFEST)
  validate_manifest(manifest, path)
  os.makedirs(directory, exist_ok=True)
  text = json.dumps(manifest, indent=2, sort_keys=True).encode("utf-8")
  files.atomic_write(path, text, fault="manifest.before_rename")
  return path


def read_manifest(directory: str) -> dict:
  """Reads and validates `directory/manifest.json`."""
  path = os.path.join(directory, MANIFEST)
  try:
    with open(path, encoding="utf-8") as f:
      manifest = json.load(f)
  except FileNotFoundError:
    raise DataError(f"{path} does not exist: point data.path at a finished sampling run")
  except (OSError, ValueError) as e:
    raise DataError(f"{path} is not valid JSON ({e}): re-run the sampling stage") from None
  return validate_manifest(manifest, path)


def _load(directory: str, entry: dict, keys: tuple[str, ...]) -> tuple[np.ndarray, ...]:
  path = os.path.join(directory, entry["file"])
  try:
    with open(path, "rb") as f:
      data = f.read()
  except FileNotFoundError:
    raise DataError(f"shard {path} listed in {MANIFEST} does not exist: re-run the sampling "
                    "stage (it resumes) or remove the entry") from None
  except OSError as e:
    raise DataError(f"shard {path} cannot be read ({e.strerror}): check its permissions, or "
                    "delete it and re-run the sampling stage") from None
  if entry.get("sha256") and hashlib.sha256(data).hexdigest() != entry["sha256"]:
    raise DataError(f"shard {path} is damaged: its bytes do not match the sha256 in "
                    f"{MANIFEST} ({len(data):,} bytes); rerun the sampling command, which "
                    "draws damaged shards again")
  try:
    # Each member's CRC-32 guards the shard even where no manifest lists its sha256.
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
      corrupt = archive.testzip()
    if corrupt is not None:
      raise DataError(f"shard {path} is damaged: its member {corrupt} fails its CRC-32; rerun "
                      "the sampling command, which draws damaged shards again")
    shard = files.read_npz(data)
    missing = [k for k in keys if k not in shard]
    if missing:
      raise DataError(f"shard {path} has no key(s) {missing}; keys present: "
                      f"{sorted(shard)}. Re-run the sampling stage for this shard")
    arrays = tuple(shard[k] for k in keys)
  except DataError:
    raise
  except Exception as e:  # zipfile, pickle and format errors all mean a damaged shard
    raise DataError(f"shard {path} is damaged and cannot be read ({e}); rerun the sampling "
                    "command, which draws damaged shards again") from None
  for key, array in zip(keys, arrays):
    if array.shape[:1] != (entry["count"],):
      raise DataError(f"shard {path} key '{key}' has {array.shape[:1]} rows but {MANIFEST} "
                      f"says {entry['count']}: delete the shard and re-run the sampling stage")
  return arrays


def read_shard(directory: str, entry: dict, image_shape) -> tuple[np.ndarray, ...]:
  """A whole shard, every array read and checked: (images, labels, index)."""
  images, labels, index = _load(directory, entry, ("images", "labels", "index"))
  _check_images(images, directory, entry, image_shape)
  _check_integers(directory, entry, labels=labels, index=index)
  return images, labels.astype(np.int64), index.astype(np.int64)


def read_shard_labels(directory: str, entry: dict) -> tuple[np.ndarray, np.ndarray]:
  """The `labels` and `index` of one shard (its images are not read)."""
  labels, index = _load(directory, entry, ("labels", "index"))
  _check_integers(directory, entry, labels=labels, index=index)
  return labels.astype(np.int64), index.astype(np.int64)


def read_shard_groups(directory: str, entry: dict, num_groups: int | None = None) -> np.ndarray:
  """The `groups` int64 (N,) of one shard (with `num_groups`, every id checked to lie in
  [0, num_groups))."""
  (groups,) = _load(directory, entry, ("groups",))
  _check_integers(directory, entry, groups=groups)
  if num_groups is not None and groups.size and (groups.min() < 0 or groups.max() >= num_groups):
    bad = groups[(groups < 0) | (groups >= num_groups)][0]
    raise DataError(f"shard {os.path.join(directory, entry['file'])} key 'groups' holds id "
                    f"{int(bad)}, outside the manifest's num_groups [0, {num_groups}): re-run "
                    "the sampling stage")
  return groups.astype(np.int64)


def read_shard_images(directory: str, entry: dict, image_shape) -> np.ndarray:
  """The uint8 (N, H, W, C) `images` of one shard, checked against `image_shape`."""
  (images,) = _load(directory, entry, ("images",))
  _check_images(images, directory, entry, image_shape)
  return images


def _check_integers(directory: str, entry: dict, **arrays) -> None:
  for key, array in arrays.items():
    if array.ndim != 1 or not np.issubdtype(array.dtype, np.integer):
      raise DataError(f"shard {os.path.join(directory, entry['file'])} key '{key}' must be "
                      f"integers (N,), got {array.dtype} {array.shape}")


def _check_images(images: np.ndarray, directory: str, entry: dict, image_shape) -> None:
  if images.dtype != np.uint8 or images.shape[1:] != tuple(image_shape):
    raise DataError(f"shard {os.path.join(directory, entry['file'])} key 'images' is "
                    f"{images.dtype} {images.shape}, but the manifest says uint8 "
                    f"(N, {', '.join(map(str, image_shape))}): re-run the sampling stage")
