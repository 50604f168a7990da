"""Run logging: JSON lines in the workdir always, TensorBoard scalars and images, a progress line."""

from __future__ import annotations

import io
import json
import logging
import math
import os
import sys
import time

import jax
import numpy as np

from jaxsynth import files


def _plain(value):
  if isinstance(value, (np.generic, np.ndarray)) and np.ndim(value) == 0:
    return value.item()
  if isinstance(value, (np.ndarray, list, tuple)):
    return [_plain(v) for v in value]
  if isinstance(value, dict):
    return {k: _plain(v) for k, v in value.items()}
  return value


def image_grid(images: np.ndarray, columns: int = 8, mean=0.5, std=0.5):
  """Tiles normalised (N, H, W, C) images (mean, std: scalars or per channel) into one uint8
  (rows*H, columns*W, 3) grid."""
  images = np.clip((np.asarray(images, np.float32) * std + mean) * 255.0, 0, 255).astype(np.uint8)
  if images.shape[-1] == 1:
    images = np.repeat(images, 3, axis=-1)
  n, h, w, c = images.shape
  rows = -(-n // columns)
  grid = np.zeros((rows * h, columns * w, c), np.uint8)
  for i, image in enumerate(images):
    r, col = divmod(i, columns)
    grid[r * h:(r + 1) * h, col * w:(col + 1) * w] = image
  return grid


LOG_FILE = "log.jsonl"


def truncate_log(path: str, last_step: int) -> int:
  """Keeps the lines of a JSON-lines log up to `last_step` (drops torn lines); returns dropped."""
  if not os.path.exists(path):
    return 0
  kept, dropped = [], 0
  with open(path, encoding="utf-8", errors="replace") as f:
    for line in f:
      try:
        record = json.loads(line)
        keep = line.endswith("\n") and int(record["step"]) <= last_step
      except (ValueError, KeyError, TypeError):
        keep = False
      if keep:
        kept.append(line)
      else:
        dropped += 1
  if dropped:
    files.atomic_write(path, "".join(kept).encode("utf-8"))
  return dropped


class MetricWriter:
  """Writes scalars to `log.jsonl` and TensorBoard (tensorboardX) on process 0 only.

  `resume_step`: the step a resumed run restarts from; log lines and TensorBoard events a
  killed run wrote after it are dropped, so the resumed run writes each step once.
  """

  def __init__(self, workdir: str, tensorboard: bool = True, resume_step: int = 0):
    self.enabled = jax.process_index() == 0
    self._jsonl = None
    self._tb = None
    if not self.enabled:
      return
    path = os.path.join(workdir, LOG_FILE)
    truncate_log(path, resume_step)
    self._jsonl = open(path, "a", encoding="utf-8")
    if tensorboard:
      try:
        from tensorboardX import SummaryWriter
        self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"),
                                 purge_step=resume_step + 1)
      except ImportError:
        logging.warning("tensorboardX is not installed; TensorBoard summaries are off")

  def scalars(self, step: int, values: dict) -> None:
    """Appends one JSON line {"step": step, **values} and the same scalars to TensorBoard."""
    if not self.enabled:
      return
    values = {k: _plain(v) for k, v in values.items()}
    self._jsonl.write(json.dumps({"step": int(step), **values}) + "\n")
    self._jsonl.flush()
    if self._tb is not None:
      for key, value in values.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
          self._tb.add_scalar(key, value, int(step))

  def image(self, step: int, tag: str, image: np.ndarray) -> None:
    """Writes one uint8 (H, W, C) image (e.g. a sample grid) to TensorBoard."""
    if self.enabled and self._tb is not None:
      self._tb.add_image(tag, np.asarray(image), int(step), dataformats="HWC")

  def close(self) -> None:
    """Flushes and closes the files."""
    if self._jsonl is not None:
      self._jsonl.close()
    if self._tb is not None:
      self._tb.close()


def png_bytes(image: np.ndarray) -> bytes:
  """Encodes a uint8 (H, W, C) image (C = 1 or 3) as PNG."""
  from PIL import Image  # pylint: disable=import-outside-toplevel
  image = np.asarray(image, np.uint8)
  buffer = io.BytesIO()
  Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(buffer, format="PNG")
  return buffer.getvalue()


class Progress:
  """A one-line progress report: step, steps/s, ETA and the latest scalars."""

  def __init__(self, total_steps: int, start_step: int, stream=None, unit: str = "step"):
    self.total, self.start, self.unit = total_steps, start_step, unit
    self.t0 = time.perf_counter()
    self.stream = stream or sys.stderr
    self.enabled = jax.process_index() == 0

  def rate(self, step: int) -> float:
    """Steps per second since this run (re)started."""
    elapsed = time.perf_counter() - self.t0
    return (step - self.start) / elapsed if elapsed > 0 else 0.0

  def update(self, step: int, values: dict) -> None:
    """Prints `step/total  x.x steps/s  ETA mm:ss  key=value ...`."""
    if not self.enabled:
      return
    rate = self.rate(step)
    eta = (self.total - step) / rate if rate > 0 else math.inf
    eta_text = "?" if math.isinf(eta) else f"{int(eta // 60):d}:{int(eta % 60):02d}"
    shown = "  ".join(f"{k}={v:.4g}" for k, v in values.items() if isinstance(v, float))
    print(f"{self.unit} {step}/{self.total}  {rate:.2f} {self.unit}s/s  ETA {eta_text}  {shown}",
          file=self.stream, flush=True)
