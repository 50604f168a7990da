"""The run directory: resolved config, atomic artifact writes, finished/resume/overwrite rules."""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile

import jax
import numpy as np

from jaxsynth import config as config_lib
from jaxsynth.errors import CheckpointError

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.json"
RUN_ARTIFACTS = (CONFIG_FILE, METRICS_FILE, "log.jsonl", "predictions.npz", "checkpoints",
                 "tensorboard", "report.md", "samples", "grids")


def atomic_write_bytes(path: str, data: bytes) -> None:
  """Writes `data` to a temporary file beside `path`, then renames it into place."""
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-" + os.path.basename(path))
  try:
    with os.fdopen(fd, "wb") as f:
      f.write(data)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def write_json(path: str, obj) -> None:
  """Atomically writes `obj` as indented JSON."""
  atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def write_npz(path: str, **arrays) -> None:
  """Atomically writes numpy arrays to an .npz file."""
  buffer = io.BytesIO()
  np.savez(buffer, **arrays)
  atomic_write_bytes(path, buffer.getvalue())


def config_diff(old, new, prefix="") -> list[str]:
  """Lines "key: old -> new" for each key that differs between two resolved configs (dicts)."""
  keys = sorted(set(old) | set(new))
  out = []
  for k in keys:
    a, b = old.get(k, "<missing>"), new.get(k, "<missing>")
    if isinstance(a, dict) and isinstance(b, dict):
      out += config_diff(a, b, f"{prefix}{k}.")
    elif a != b:
      out.append(f"{prefix}{k}: {a!r} -> {b!r}")
  return out


def prepare(workdir: str, config, overwrite: bool) -> bool:
  """Creates `workdir` and writes config.json; returns True when an unfinished run is resumed.

  A finished run (metrics.json present) is never touched without `overwrite`; an unfinished
  one resumes only with the same config.
  """
  if not workdir:
    raise CheckpointError("--workdir is required: the directory for this run's outputs")
  resolved = json.loads(config_lib.to_json(config))
  config_path = os.path.join(workdir, CONFIG_FILE)
  is_main = jax.process_index() == 0
  if overwrite and os.path.isdir(workdir):
    if is_main:
      for name in RUN_ARTIFACTS:
        target = os.path.join(workdir, name)
        if os.path.isdir(target):
          shutil.rmtree(target)
        elif os.path.exists(target):
          os.remove(target)
    _barrier("jaxsynth-overwrite")
  resuming = False
  if os.path.exists(os.path.join(workdir, METRICS_FILE)):
    raise CheckpointError(f"{workdir} holds a finished run ({METRICS_FILE} exists); pass "
                          "--overwrite to replace it or choose another --workdir")
  if os.path.exists(config_path):
    with open(config_path, encoding="utf-8") as f:
      previous = json.load(f)
    changes = config_diff(previous, resolved)
    if changes:
      raise CheckpointError(
          f"{workdir} holds an unfinished run with another config ({'; '.join(changes[:5])}); "
          "rerun with the same config to resume, pass --overwrite, or choose another --workdir")
    resuming = True
  # Several processes: all have looked before process 0 creates anything, so they all see the
  # same files (same `resuming`, same barriers above), whichever process is slower.
  _barrier("jaxsynth-prepare-checked")
  if is_main:
    os.makedirs(workdir, exist_ok=True)
    write_json(config_path, resolved)
  _barrier("jaxsynth-prepare")
  return resuming


def _barrier(name: str) -> None:
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(name)
