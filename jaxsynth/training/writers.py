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


class MetricWriter:
  """Writes scalars to `log.jsonl` and TensorBoard (tensorboardX) on process 0 only."""

  def __init__(self, workdir: str, tensorboard: bool = True):
    self.enabled = jax.process_index() == 0
    self._jsonl = None
    self._tb = None
    if not self.enabled:
      return
    self._jsonl = open(os.path.join(workdir, "log.jsonl"), "a", encoding="utf-8")
    if tensorboard:
      try:
        from tensorboardX import SummaryWriter
        self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))
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
