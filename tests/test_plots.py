"""Pictures for judging synthetic images: class grids, before/after grids, bar charts, PNGs."""

import numpy as np
import pytest
from PIL import Image

from jaxsynth.metrics import plots


def _images(n, size=28, channels=1, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (n, size, size, channels), dtype=np.uint8)


def _tile(grid, num_classes, per_class, c, j, tile):
  """The (tile x tile) pixels of slot (c, j), located from the grid's shape (see plots docs)."""
  step = tile + plots.GAP
  y = grid.shape[0] - (num_classes - c) * step
  x = grid.shape[1] - (per_class - j) * step
  return grid[y:y + tile, x:x + tile]


def test_class_grids_rows_tiles_and_upscaled_pixels():
  images, labels = _images(10), np.array([0, 1, 0, 2, 0, 1, 0, 0, 1, 0])
  grid = plots.class_grids(images, labels, 4, ["a", "b", "c", "d"], per_class=3, title="t")
  assert grid.dtype == np.uint8 and grid.ndim == 3 and grid.shape[-1] == 3
  tile = 28 * 2  # 28 px images are upscaled by 2 to reach 56 px
  assert grid.shape[0] >= 4 * (tile + plots.GAP) and grid.shape[1] > 3 * (tile + plots.GAP)
  expected = np.repeat(np.repeat(images, 2, axis=1), 2, axis=2).repeat(3, axis=-1)
  members = {c: np.flatnonzero(labels == c) for c in range(4)}
  for c in range(4):
    for j in range(3):
      got = _tile(grid, 4, 3, c, j, tile)
      if j < len(members[c]):
        np.testing.assert_array_equal(got, expected[members[c][j]])
      else:  # fewer images than per_class (class 3 has none): an empty slot
        assert (got == plots.EMPTY_TILE).all()


def test_class_grids_grayscale_rgb_and_scale():
  gray = plots.class_grids(_images(4, size=8)[..., 0], np.zeros(4, int), 1, per_class=2, scale=3)
  assert gray.shape[-1] == 3 and (gray[..., 0] == gray[..., 2]).all()
  rgb = _images(3, size=64, channels=3)
  grid = plots.class_grids(rgb, [1, 1, 1], 2, per_class=4)  # 64 px: no upscaling
  np.testing.assert_array_equal(_tile(grid, 2, 4, 1, 2, 64), rgb[2])
  assert (_tile(grid, 2, 4, 0, 0, 64) == plots.EMPTY_TILE).all()  # class 0: "0 (n=0)"


def test_class_grids_rejects_mismatched_labels():
  with pytest.raises(ValueError, match="labels"):
    plots.class_grids(_images(3), [0, 1], 2)


def test_before_after_grids_side_by_side():
  images, labels = _images(12), np.arange(12) % 3
  both = plots.before_after_grids(images, labels, images[:2], labels[:2], 3, ["x", "y", "z"],
                                  per_class=4)
  alone = plots.class_grids(images, labels, 3, ["x", "y", "z"], per_class=4)
  assert both.dtype == np.uint8 and both.shape[-1] == 3
  assert both.shape[0] > alone.shape[0] and both.shape[1] > 2 * alone.shape[1]


def _color_pixels(image, color):
  return int((image == np.array(color, np.uint8)).all(axis=-1).sum())


def test_bar_chart_bigger_value_covers_more_pixels():
  first, second = plots.SERIES_COLORS[:2]
  chart = plots.bar_chart({"a": {"kid": 1.0, "fid": 3.0}, "b": {"kid": 2.0, "fid": 0.5}}, "t",
                          ylabel="value")
  assert chart.dtype == np.uint8 and chart.ndim == 3 and chart.shape[-1] == 3
  assert 100 <= chart.shape[0] <= 2000 and 200 <= chart.shape[1] <= 2000
  # series totals: kid 3.0, fid 3.5 (the legend swatches are the same size for both)
  assert _color_pixels(chart, second) > _color_pixels(chart, first) > 0
  bigger = plots.bar_chart({"a": {"kid": 1.0, "fid": 3.0}, "b": {"kid": 2.0, "fid": 3.0}}, "t",
                           ylabel="value")
  assert bigger.shape == chart.shape
  assert _color_pixels(bigger, second) > _color_pixels(chart, second)


def test_bar_chart_none_negative_and_many_groups():
  values = {f"class {i}": {"before": -0.5 * i, "after": None if i % 3 else 1e4 * i,
                           "c": float("nan"), "d": 0.0} for i in range(11)}
  chart = plots.bar_chart(values, "mixed")
  assert chart.dtype == np.uint8 and chart.shape[-1] == 3
  assert _color_pixels(chart, plots.SERIES_COLORS[0]) > 0
  only_none = plots.bar_chart({"a": {"m": None}, "b": {}}, "nothing known")
  assert only_none.shape[-1] == 3
  with pytest.raises(ValueError):
    plots.bar_chart({}, "empty")


def test_metric_bars_flat_and_labelled_reports(monkeypatch):
  seen = []
  real = plots.bar_chart
  monkeypatch.setattr(plots, "bar_chart", lambda values, *a, **k: seen.append(values)
                      or real(values, *a, **k))
  flat = {"per_class.normal.kid_mean": 0.1, "per_class.covid.19.kid_mean": 0.3,
          "per_class.normal.fid": 9.0, "kid_mean": 0.2, "num_samples": 5}
  assert plots.metric_bars(flat, "kid_mean").shape[-1] == 3
  assert seen[-1] == {"normal": {"kid_mean": 0.1}, "covid.19": {"kid_mean": 0.3}}
  after = {"per_class.normal.kid_mean": 0.05}
  plots.metric_bars({"before": flat, "after": after}, "kid_mean", title="KID")
  assert seen[-1] == {"normal": {"before": 0.1, "after": 0.05},
                      "covid.19": {"before": 0.3, "after": None}}
  with pytest.raises(ValueError, match="per_class"):
    plots.metric_bars(flat, "precision")


def test_write_png_round_trip(tmp_path):
  image = plots.class_grids(_images(5), [0, 1, 0, 1, 1], 2, per_class=2)
  path = plots.write_png(str(tmp_path / "sub" / "grid.png"), image)
  assert path == str(tmp_path / "sub" / "grid.png")
  with Image.open(path) as opened:
    assert opened.format == "PNG"
    np.testing.assert_array_equal(np.asarray(opened.convert("RGB")), image)
