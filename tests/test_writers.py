"""Run logging: JSON lines, TensorBoard event files, image grids."""

import json
import os

import numpy as np

from jaxsynth.training.writers import MetricWriter, image_grid


def test_scalars_go_to_jsonl_and_tensorboard(tmp_path):
  writer = MetricWriter(str(tmp_path))
  writer.scalars(3, {"train/loss": np.float32(1.5), "val/auc": 0.75})
  writer.image(3, "train/batch", image_grid(np.zeros((5, 4, 4, 1))))
  writer.close()
  lines = [json.loads(l) for l in open(tmp_path / "log.jsonl")]
  assert lines == [{"step": 3, "train/loss": 1.5, "val/auc": 0.75}]
  events = os.listdir(tmp_path / "tensorboard")
  assert events and os.path.getsize(tmp_path / "tensorboard" / events[0]) > 0


def test_image_grid_tiles_and_denormalises():
  images = np.stack([np.full((2, 3, 1), v, np.float32) for v in (-1.0, 1.0, 0.0)])
  grid = image_grid(images, columns=2)
  assert grid.shape == (4, 6, 3) and grid.dtype == np.uint8
  assert grid[0, 0, 0] == 0 and grid[0, 3, 0] == 255 and grid[2, 0, 0] == 127
  assert grid[2, 3, 0] == 0  # the empty cell
