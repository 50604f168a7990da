"""Pictures for judging synthetic images: per-class sample grids and grouped bar charts.

Drawn with numpy and PIL only (matplotlib is not a dependency); every function returns a uint8
(H, W, 3) array, and `write_png` stores one atomically.

- `class_grids`: one row per class (label column "name (n=count)", then up to `per_class`
  tiles); tile (c, j) sits at y = H - (num_classes - c) * (tile_h + GAP),
  x = W - (per_class - j) * (tile_w + GAP), so the layout follows from the output shape.
- `bar_chart` / `metric_bars`: grouped horizontal bars (groups down the left, series in
  `SERIES_COLORS` with a legend), values printed at the bar ends, None as "n/a", a zero line.
"""

from __future__ import annotations

import math
import numbers

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from jaxsynth import files
from jaxsynth.training.writers import image_grid, png_bytes

MIN_TILE = 56   # `scale=None` upscales tiles to at least this many pixels
GAP = 2         # white pixels after each tile (right and below)
PAD = 6
WHITE, BLACK, GREY, LIGHT = (255, 255, 255), (0, 0, 0), (110, 110, 110), (225, 225, 225)
EMPTY_TILE = 240  # grey level of the slots of a row with fewer than `per_class` images
# matplotlib's tab10 then two more, so a chart of up to 12 series repeats no colour.
SERIES_COLORS = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40),
                 (148, 103, 189), (140, 86, 75), (227, 119, 194), (127, 127, 127),
                 (188, 189, 34), (23, 190, 207), (0, 0, 128), (128, 0, 0))
BAR_H, GROUP_GAP, PLOT_W, MAX_NAME = 14, 10, 420, 32


def _font():
  return ImageFont.load_default()


def _size(font, text: str) -> tuple[int, int]:
  _, _, right, bottom = font.getbbox(text)
  return int(right), int(bottom)


def _names(class_names, num_classes: int) -> list[str]:
  names = [str(n) for n in (class_names or ())][:num_classes]
  return names + [str(c) for c in range(len(names), num_classes)]


def _short(text: str) -> str:
  return text if len(text) <= MAX_NAME else text[:MAX_NAME - 1] + "~"


def _with_title(body: np.ndarray, title, font) -> np.ndarray:
  if not title:
    return body
  text_w, text_h = _size(font, title)
  size = (max(body.shape[1], text_w + 2 * PAD), body.shape[0] + text_h + 2 * PAD)
  canvas = Image.new("RGB", size, WHITE)
  ImageDraw.Draw(canvas).text((PAD, PAD), title, fill=BLACK, font=font)
  canvas.paste(Image.fromarray(body), (canvas.width - body.shape[1], text_h + 2 * PAD))
  return np.asarray(canvas)


def class_grids(images, labels, num_classes: int, class_names=None, per_class: int = 8,
                title=None, scale=None) -> np.ndarray:
  """A uint8 (H', W', 3) grid: per class a labelled row of its first `per_class` images."""
  images, labels = np.asarray(images), np.asarray(labels).reshape(-1)
  if images.ndim == 3:
    images = images[..., None]
  if images.ndim != 4 or images.shape[-1] not in (1, 3, 4) or len(images) != len(labels):
    raise ValueError(f"images must be (N, H, W, C) with C in 1/3/4 and N = len(labels), got "
                     f"{images.shape} and {labels.shape[0]} labels")
  if images.dtype != np.uint8:
    images = np.clip(images, 0, 255).astype(np.uint8)
  images = np.repeat(images, 3, axis=-1) if images.shape[-1] == 1 else images[..., :3]
  h, w = images.shape[1:3]
  scale = int(scale or max(1, math.ceil(MIN_TILE / max(1, min(h, w)))))
  tile_h, tile_w = h * scale + GAP, w * scale + GAP
  slots = np.full((num_classes * per_class, tile_h, tile_w, 3), 255, np.uint8)
  slots[:, :h * scale, :w * scale] = EMPTY_TILE
  counts = np.zeros(num_classes, np.int64)
  for c in range(num_classes):
    members = np.flatnonzero(labels == c)
    counts[c] = len(members)
    for j, i in enumerate(members[:per_class]):
      slots[c * per_class + j, :h * scale, :w * scale] = images[i].repeat(scale, 0).repeat(scale, 1)
  tiles = image_grid(slots, columns=per_class, mean=0.0, std=1.0 / 255.0)  # uint8 round trip
  font = _font()
  texts = [f"{_short(name)} (n={counts[c]})" for c, name in
           enumerate(_names(class_names, num_classes))]
  label_w = max([_size(font, t)[0] for t in texts] + [0]) + 2 * PAD
  canvas = Image.new("RGB", (label_w + tiles.shape[1], tiles.shape[0]), WHITE)
  canvas.paste(Image.fromarray(tiles), (label_w, 0))
  draw = ImageDraw.Draw(canvas)
  for c, text in enumerate(texts):
    draw.text((PAD, c * tile_h + (tile_h - GAP - _size(font, text)[1]) // 2), text,
              fill=BLACK if counts[c] else GREY, font=font)
  return _with_title(np.asarray(canvas), title, font)


def before_after_grids(before_images, before_labels, after_images, after_labels,
                       num_classes: int, class_names=None, per_class: int = 8,
                       scale=None) -> np.ndarray:
  """The class grids before and after filtering side by side, each headed with its count."""
  grids = [class_grids(x, y, num_classes, class_names, per_class,
                       title=f"{when} filtering (n={len(np.asarray(y).reshape(-1))})", scale=scale)
           for when, x, y in (("before", before_images, before_labels),
                              ("after", after_images, after_labels))]
  height = max(g.shape[0] for g in grids)
  spacer = np.full((height, 4 * PAD, 3), 255, np.uint8)
  padded = [np.pad(g, ((0, height - g.shape[0]), (0, 0), (0, 0)), constant_values=255)
            for g in grids]
  return np.concatenate([padded[0], spacer, padded[1]], axis=1)


def _number(value):
  if isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value):
    return float(value)
  return None


def _fmt(value: float) -> str:
  text = f"{value + 0.0:.3g}"  # three significant digits; 1.23e+03 reads better as 1230
  return f"{float(text):.0f}" if "e+" in text and abs(value) < 1e9 else text


def _axis(lo: float, hi: float, count: int = 5) -> tuple[float, float, np.ndarray]:
  """A value range around [lo, hi] (widened to a tick if that costs at most half a step), ticks."""
  raw = (hi - lo) / count
  step = 10.0 ** math.floor(math.log10(raw))
  step *= next(m for m in (1, 2, 2.5, 5, 10) if m * step >= raw)
  first, last = math.floor(lo / step) * step, math.ceil(hi / step) * step
  lo, hi = (first if lo - first <= step / 2 else lo), (last if last - hi <= step / 2 else hi)
  ticks = np.arange(math.ceil(lo / step - 1e-9), math.floor(hi / step + 1e-9) + 1) * step
  return lo, hi, ticks


def bar_chart(values: dict, title: str, ylabel=None) -> np.ndarray:
  """A uint8 (H, W, 3) grouped horizontal bar chart of {group: {series: value or None}}."""
  groups = [str(g) for g in values]
  series = list(dict.fromkeys(str(s) for inner in values.values() for s in inner))
  data = [[_number({str(k): v for k, v in inner.items()}.get(s)) for s in series]
          for inner in values.values()]
  if not groups or not series:
    raise ValueError("bar_chart needs at least one group with one series")
  known = [v for row in data for v in row if v is not None]
  lo, hi = min(known + [0.0]), max(known + [0.0])
  if hi - lo <= 0:
    hi = lo + 1.0
  lo, hi, ticks = _axis(lo, hi)
  font = _font()
  _, text_h = _size(font, "Ag")
  label_w = max(_size(font, _short(g))[0] for g in groups) + 2 * PAD
  value_w = max(_size(font, t)[0] for t in [_fmt(v) for v in known] + ["n/a"]) + PAD
  x_left = label_w + value_w

  def x_of(v: float) -> int:
    return int(round(x_left + (v - lo) / (hi - lo) * PLOT_W))

  legend = [(s, _size(font, s)[0] + text_h + 3 * PAD) for s in series]
  title_h = text_h + 2 * PAD
  legend_y = title_h
  plot_y = legend_y + text_h + 2 * PAD
  group_h = len(series) * BAR_H + GROUP_GAP
  plot_b = plot_y + len(groups) * group_h
  width = max(x_left + PLOT_W + value_w + PAD, sum(w for _, w in legend) + 2 * PAD,
              _size(font, title)[0] + 2 * PAD)
  height = plot_b + 2 * text_h + 4 * PAD + (text_h + PAD if ylabel else 0)
  image = Image.new("RGB", (int(width), int(height)), WHITE)
  draw = ImageDraw.Draw(image)
  draw.text((PAD, PAD), title, fill=BLACK, font=font)
  x = PAD
  for s, (name, w) in enumerate(legend):
    color = SERIES_COLORS[s % len(SERIES_COLORS)]
    draw.rectangle([x, legend_y + 1, x + text_h - 2, legend_y + text_h - 1], fill=color)
    draw.text((x + text_h + PAD // 2, legend_y), name, fill=BLACK, font=font)
    x += w
  for t in ticks:
    draw.line([x_of(t), plot_y - 2, x_of(t), plot_b], fill=LIGHT)
    text = f"{t + 0.0:g}"  # no "-0"
    draw.text((x_of(t) - _size(font, text)[0] // 2, plot_b + PAD), text, fill=BLACK, font=font)
  if ylabel:
    draw.text((x_left + (PLOT_W - _size(font, ylabel)[0]) // 2, plot_b + text_h + 2 * PAD),
              ylabel, fill=BLACK, font=font)
  zero = x_of(0.0)
  for g, (name, row) in enumerate(zip(groups, data)):
    top = plot_y + g * group_h + GROUP_GAP // 2
    draw.text((PAD, top + (group_h - GROUP_GAP - text_h) // 2), _short(name), fill=BLACK,
              font=font)
    for s, value in enumerate(row):
      y = top + s * BAR_H
      mid = y + (BAR_H - 1 - text_h) // 2
      if value is None:
        draw.text((zero + 3, mid), "n/a", fill=GREY, font=font)
        continue
      end, text = x_of(value), _fmt(value)
      if end != zero:
        draw.rectangle([min(zero, end), y + 1, max(zero, end), y + BAR_H - 2],
                       fill=SERIES_COLORS[s % len(SERIES_COLORS)])
      text_x = end + 3 if value >= 0 else end - 3 - _size(font, text)[0]
      draw.text((text_x, mid), text, fill=BLACK, font=font)
  draw.line([zero, plot_y - 2, zero, plot_b], fill=BLACK)
  draw.line([x_left, plot_b, x_left + PLOT_W, plot_b], fill=GREY)
  return np.asarray(image)


def _per_class(report: dict, metric: str) -> dict:
  prefix, suffix = "per_class.", "." + metric
  return {k[len(prefix):-len(suffix)]: v for k, v in report.items()
          if isinstance(k, str) and k.startswith(prefix) and k.endswith(suffix)
          and len(k) > len(prefix) + len(suffix)}


def metric_bars(report: dict, metric: str, title=None) -> np.ndarray:
  """bar_chart of the `per_class.<name>.<metric>` keys of one flat report or of {label: report}."""
  labelled = report and all(isinstance(v, dict) for v in report.values())
  reports = report if labelled else {metric: report}
  per = {str(label): _per_class(flat, metric) for label, flat in reports.items()}
  names = list(dict.fromkeys(name for found in per.values() for name in found))
  if not names:
    raise ValueError(f"no per_class.<name>.{metric} keys in the report")
  values = {name: {label: found.get(name) for label, found in per.items()} for name in names}
  return bar_chart(values, title or f"{metric} per class", ylabel=metric)


SCATTER_SIZE = 360   # the scatter plot's square plotting area, in pixels


def pca_2d(points) -> np.ndarray:
  """The (N, 2) projection of (N, D) points on their two leading principal axes."""
  x = np.asarray(points, np.float64)
  x = x - x.mean(axis=0)
  _, _, vt = np.linalg.svd(x, full_matrices=False)
  out = x @ vt[:2].T
  return np.pad(out, ((0, 0), (0, 2 - out.shape[1])))


def scatter(points, labels, names, title: str) -> np.ndarray:
  """A uint8 (H, W, 3) scatter plot of (N, 2) points, a colour per label with a legend."""
  xy = np.asarray(points, np.float64)
  labels = np.asarray(labels)
  font = _font()
  _, text_h = _size(font, "Ag")
  legend_w = max(_size(font, _short(str(n)))[0] for n in names) + text_h + 3 * PAD
  top = text_h + 2 * PAD
  width, height = SCATTER_SIZE + 2 * PAD + legend_w, top + SCATTER_SIZE + 2 * PAD
  image = Image.new("RGB", (int(width), int(height)), WHITE)
  draw = ImageDraw.Draw(image)
  draw.text((PAD, PAD), title, fill=BLACK, font=font)
  lo, hi = xy.min(axis=0), xy.max(axis=0)
  span = np.where(hi - lo > 0, hi - lo, 1.0)
  pixels = PAD + 3 + (xy - lo) / span * (SCATTER_SIZE - 6)
  draw.rectangle([PAD, top, PAD + SCATTER_SIZE, top + SCATTER_SIZE], outline=GREY)
  for (x, y), c in zip(pixels, labels):
    color = SERIES_COLORS[int(c) % len(SERIES_COLORS)]
    y = top + SCATTER_SIZE - (y - PAD)
    draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=color)
  for c, name in enumerate(names):
    y = top + c * (text_h + PAD)
    x = SCATTER_SIZE + 3 * PAD
    draw.rectangle([x, y + 1, x + text_h - 2, y + text_h - 1],
                   fill=SERIES_COLORS[c % len(SERIES_COLORS)])
    draw.text((x + text_h + PAD // 2, y), _short(str(name)), fill=BLACK, font=font)
  return np.asarray(image)


def write_png(path: str, image) -> str:
  """Writes a uint8 (H, W, C) image as a PNG atomically; returns `path`."""
  files.atomic_write(path, png_bytes(np.asarray(image, np.uint8)))
  return path
