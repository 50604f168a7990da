"""The figures and tables of a synthesis recipe's report.md beyond the metric table: the per-class
accuracy change as a bar chart (IOIS Fig. 2 style), a per-class grid of the synthetic set the
recipe trained on, the generator's per-class FID/KID against the real train split, and the
filter's acceptance rates.

The FID/KID are measured in the feature space named by `recipe.report_features`; by default
(`""`) that is the baseline classifier's penultimate features (`classifier:<baseline stage>`),
since Inception weights cannot be downloaded here; `inception:WEIGHTS` gives the usual FID.
Everything is deterministic in the seed, so a rerun writes the same report.
"""

from __future__ import annotations

import json
import logging
import os

import numpy as np

from jaxsynth.data.sources import open_source
from jaxsynth.data.pipeline import input_shape
from jaxsynth.metrics import image_sets, plots
from jaxsynth.synthesis import filters

log = logging.getLogger(__name__)

FIGURES_DIR = "report"
CHART_FILE = "per_class_accuracy.png"
GRID_FILE = "synthetic_samples.png"
#: The generator metrics the report shows per class (keys of metrics.generation's output).
GENERATOR_KEYS = ("fid", "fid_reliable", "kid_mean")


def accuracy_chart(table: dict, names: list[str]) -> np.ndarray | None:
  """Per-class accuracy of the baseline and the recipe as grouped bars; None without both."""
  per_class = table["per_class_accuracy"]
  if per_class.get("delta") is None:
    return None
  values = {name: {"baseline": b, "recipe": r}
            for name, b, r in zip(names, per_class["baseline"], per_class["recipe"])}
  return plots.bar_chart(values, f"per-class accuracy ({table['split']} split)", "accuracy")


def synthetic_set(paths) -> image_sets.ImageSet | None:
  """The synthetic images a stage trained on (its data.synthetic.paths), as one ImageSet."""
  sets = [image_sets.load_set(p) for p in paths]
  if not sets:
    return None
  if len(sets) == 1:
    return sets[0]
  return image_sets.ImageSet(" + ".join(s.name for s in sets),
                             np.concatenate([s.images for s in sets]),
                             np.concatenate([s.labels for s in sets]), None,
                             sets[0].class_names)


def generator_metrics(config, synthetic: image_sets.ImageSet, features: str) -> dict:
  """{class name: {fid, fid_reliable, kid_mean}} (and "all") of `synthetic` against the real
  train split; a class with fewer than 2 images on either side gets None and a note."""
  # pylint: disable=import-outside-toplevel  (these load jax)
  from jaxsynth.metrics import features as features_lib
  from jaxsynth.metrics import generation
  train = open_source(config.data, "train", seed=config.seed)
  real = image_sets.from_source(train, input_shape(config.data, train))
  extractor = features_lib.make_extractor(features)
  real_f = extractor.outputs(real.images)["features"]
  fake_f = extractor.outputs(synthetic.images)["features"]
  seed = int(config.seed)

  def score(r, f) -> dict:
    n = min(len(r), len(f))
    if n < 2:
      return {**{k: None for k in GENERATOR_KEYS},
              "note": f"{len(r)} real and {len(f)} synthetic images: too few to compare"}
    out = generation.generation_metrics(r, f, which=("fid", "kid"), kid_subsets=100,
                                        kid_subset_size=min(1000, n), seed=seed)
    return {k: out.get(k) for k in GENERATOR_KEYS}

  table = {"all": score(real_f, fake_f)}
  for c, name in enumerate(train.class_names):
    r, f = real_f[real.labels == c], fake_f[synthetic.labels == c]
    if len(f):
      table[str(name)] = score(r, f)
  return {"features": extractor.name, "real": len(real), "synthetic": len(synthetic),
          "per_class": table}


def filter_acceptance(stage_dirs: dict) -> dict | None:
  """{stage: filter_report.json acceptance} of the stages that filtered samples; None if none."""
  out = {}
  for name, directory in stage_dirs.items():
    path = os.path.join(directory, filters.REPORT_FILE)
    if os.path.isfile(path):
      with open(path, encoding="utf-8") as f:
        report = json.load(f)
      out[name] = {"filter": report.get("filter", {}).get("name"),
                   "acceptance": report["acceptance"]}
  return out or None


def figures(workdir: str, table: dict, names: list[str],
            synthetic: image_sets.ImageSet | None) -> dict:
  """Writes the chart and the sample grid under WORKDIR/report/; {figure: path in workdir}."""
  out = {}
  chart = accuracy_chart(table, names)
  if chart is not None:
    out["per_class_accuracy"] = plots.write_png(
        os.path.join(workdir, FIGURES_DIR, CHART_FILE), chart)
  if synthetic is not None and len(synthetic):
    grid = plots.class_grids(synthetic.images, synthetic.labels, len(names), names,
                             title=f"synthetic set ({len(synthetic)} images)")
    out["synthetic_samples"] = plots.write_png(
        os.path.join(workdir, FIGURES_DIR, GRID_FILE), grid)
  return {k: os.path.relpath(v, workdir) for k, v in out.items()}


def _fmt(value) -> str:
  return "—" if value is None else f"{value:.4g}"


def markdown_sections(figure_paths: dict, generator: dict | None,
                      acceptance: dict | None) -> list[str]:
  """The report.md lines of the figures, the generator's metrics and the filter's acceptance."""
  lines = []
  if "per_class_accuracy" in figure_paths:
    lines += ["", "## Per-class accuracy", "",
              f"![per-class accuracy]({figure_paths['per_class_accuracy']})"]
  if "synthetic_samples" in figure_paths:
    lines += ["", "## Synthetic samples", "",
              f"![synthetic samples]({figure_paths['synthetic_samples']})"]
  if generator is not None:
    lines += ["", f"## Generator quality (vs the real train split; features "
              f"`{generator['features']}`; {generator['real']} real, {generator['synthetic']} "
              "synthetic images; FID marked * is unreliable: fewer images than feature dimensions)", "",
              "| class | FID | KID |", "|---|---|---|"]
    for name, row in generator["per_class"].items():
      star = "" if row.get("fid_reliable", True) else "*"
      lines.append(f"| {name} | {_fmt(row.get('fid'))}{star} | {_fmt(row.get('kid_mean'))} |")
  if acceptance:
    for stage, entry in acceptance.items():
      acc = entry["acceptance"]
      lines += ["", f"## Filter acceptance (stage `{stage}`, {entry['filter']} filter; overall "
                f"{_fmt(acc.get('acceptance_rate'))})", "",
                "| class | attempted | accepted | rate |", "|---|---|---|---|"]
      for name, c in acc.get("per_class", {}).items():
        lines.append(f"| {name} | {c.get('attempted')} | {c.get('accepted')} | "
                     f"{_fmt(c.get('acceptance_rate'))} |")
  return lines
