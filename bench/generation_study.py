"""The generation-metrics study of docs/results/generation_metrics.md, resumable.

Given a finished `train_diffusion` run and a finished `train_classifier` run (the domain
features and the classifier filter's judge) on one real set, it runs each cell once and writes
its result to docs/results/generation_metrics/<cell>.json (metrics, command, wall time,
device); finished cells are skipped, so a later session continues. Then it writes the
document from the cells.

  python bench/generation_study.py --data ../shared/data/pneumoniamnist.npz \
      --diffusion runs/gm/diff --classifier runs/gm/clf --runs runs/gm

Cells: real test vs real train (the floor), the plain sweep, the sweep after the classifier
filter and after the class-based realism filter (the `filter` task), and a filtered sweep
topped up to the budget (`sample.filter=classifier`). Every set is compared with the real
train split (the generator's training data) with classifier features, per class.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

OUT = os.path.join(ROOT, "docs", "results", "generation_metrics")
DOC = os.path.join(ROOT, "docs", "results", "generation_metrics.md")
METRICS = ("kid_mean", "kid_std", "fid", "precision", "recall", "f1", "density", "coverage")


def run_task(args: list[str]) -> float:
  """Runs `python -m jaxsynth.main ARGS` (resuming); returns its wall seconds."""
  t0 = time.perf_counter()
  subprocess.run([sys.executable, "-m", "jaxsynth.main", *args], cwd=ROOT, check=True)
  return time.perf_counter() - t0


def cell(name: str, build, force: bool = False) -> dict:
  """The cell's JSON, computed by `build()` unless it exists."""
  path = os.path.join(OUT, f"{name}.json")
  if os.path.exists(path) and not force:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  print(f"== cell {name}", flush=True)
  t0 = time.perf_counter()
  result = build()
  from bench.faults import machine  # pylint: disable=import-outside-toplevel
  result.update(wall_s=round(time.perf_counter() - t0, 1), device=machine(),
                date=time.strftime("%Y-%m-%d"))
  os.makedirs(OUT, exist_ok=True)
  with open(path, "w", encoding="utf-8") as f:
    json.dump(result, f, indent=2, sort_keys=True)
  return result


def measure(a: str, b: str, features: str, split_a: str = "train", split_b=None) -> dict:
  """compare_sets of B against A, per class."""
  from jaxsynth.metrics import compare, image_sets  # pylint: disable=import-outside-toplevel
  real = image_sets.load_set(a, split_a)
  other = image_sets.load_set(b, split_b)
  return compare.compare_sets(real, other, features=features, per_class=True, progress=False)


def copy_plot(src: str, name: str) -> str:
  """Copies a PNG into the results folder; returns its path relative to docs/results."""
  os.makedirs(OUT, exist_ok=True)
  shutil.copyfile(src, os.path.join(OUT, name))
  return f"generation_metrics/{name}"


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--data", required=True)
  parser.add_argument("--diffusion", required=True, help="a finished train_diffusion workdir")
  parser.add_argument("--classifier", required=True, help="a finished train_classifier workdir")
  parser.add_argument("--runs", required=True, help="where the sweeps and filtered sets go")
  parser.add_argument("--counts", default="234,390", help="sweep samples per class")
  parser.add_argument("--num-steps", type=int, default=25)
  parser.add_argument("--cfg", type=float, default=2.0)
  parser.add_argument("--batch", type=int, default=64)
  args = parser.parse_args(argv)
  for run in (args.diffusion, args.classifier):
    if not os.path.exists(os.path.join(run, "metrics.json")):
      raise SystemExit(f"{run} is not finished (no metrics.json): finish its training first")
  features = f"classifier:{os.path.abspath(args.classifier)}"
  counts = f"({args.counts},)"
  sweep_dir = os.path.join(args.runs, "sweep")
  sample_args = ["--config", "configs/diffusion.py:sample",
                 f"--config.sample.run_dir={args.diffusion}", "--config.sample.budget=counts",
                 f"--config.sample.class_counts={counts}",
                 f"--config.sample.num_steps={args.num_steps}",
                 f"--config.sample.cfg_scale={args.cfg}",
                 f"--config.sample.batch_size={args.batch}", "--config.sample.shard_size=128"]
  cells = {}
  cells["real_test"] = cell("real_test", lambda: {
      "command": f"python -m jaxsynth.metrics.generation {args.data} {args.data} (A: train, "
                 f"B: test) --features {features} --per-class",
      "metrics": measure(args.data, args.data, features, "train", "test")})

  def sweep_cell(workdir, extra=()):
    command = sample_args + ["--workdir", workdir, *extra]
    wall = run_task(command)
    with open(os.path.join(workdir, "metrics.json"), encoding="utf-8") as f:
      task = json.load(f)
    return {"command": "python -m jaxsynth.main " + " ".join(command), "task_wall_s": wall,
            "task_metrics": task, "metrics": measure(args.data, workdir, features)}

  cells["sweep"] = cell("sweep", lambda: sweep_cell(sweep_dir))
  for name, variant in (("classifier_filter", "classifier"),
                        ("realism_class_filter", "realism_class")):
    def build(variant=variant, name=name):
      workdir = os.path.join(args.runs, name)
      command = ["--config", f"configs/filter.py:{variant}", "--workdir", workdir,
                 f"--config.filter.input={sweep_dir}"]
      command += ([f"--config.filter.classifier={args.classifier}"] if variant == "classifier"
                  else [f"--config.filter.features={features}"])
      wall = run_task(command)
      with open(os.path.join(workdir, "filter_report.json"), encoding="utf-8") as f:
        report = json.load(f)
      grid = copy_plot(os.path.join(workdir, "plots", "grids_before_after.png"),
                       f"{name}_grids.png")
      return {"command": "python -m jaxsynth.main " + " ".join(command), "task_wall_s": wall,
              "acceptance": report["acceptance"], "grids": grid,
              "metrics": measure(args.data, workdir, features)}
    cells[name] = cell(name, build)

  def topped_up():
    workdir = os.path.join(args.runs, "sweep_classifier_filtered")
    out = sweep_cell(workdir, ["--config.sample.filter.name=classifier",
                               f"--config.sample.filter.classifier={args.classifier}"])
    out["grids"] = copy_plot(os.path.join(workdir, "plots", "grids_before_after.png"),
                             "topped_up_grids.png")
    return out

  cells["topped_up"] = cell("topped_up", topped_up)
  write_doc(cells, args)
  print(json.dumps({name: {k: c["metrics"].get(k) for k in ("kid_mean", "precision", "recall")}
                    for name, c in cells.items()}))


def _fmt(value) -> str:
  if value is None:
    return "n/a"
  if isinstance(value, bool):
    return "yes" if value else "no"
  if isinstance(value, float):
    return f"{value:.4f}" if abs(value) < 100 else f"{value:.1f}"
  return str(value)


LABELS = {"real_test": "real test (floor)", "sweep": "sweep, unfiltered",
          "classifier_filter": "after classifier filter",
          "realism_class_filter": "after class-based realism filter",
          "topped_up": "classifier-filtered sweep, topped up"}


def write_doc(cells: dict, args) -> None:
  """Regenerates the tables of docs/results/generation_metrics.md from the cells."""
  any_metrics = next(iter(cells.values()))["metrics"]
  classes = sorted({k.split(".")[1] for k in any_metrics if k.startswith("per_class.")})
  lines = ["<!-- tables generated by bench/generation_study.py from generation_metrics/*.json -->",
           ""]
  for scope in ["overall"] + classes:
    prefix = "" if scope == "overall" else f"per_class.{scope}."
    lines += [f"#### {scope}", "",
              "| set | n real | n synthetic | " + " | ".join(METRICS) + " | FID reliable |",
              "|---|---|---|" + "---|" * len(METRICS) + "---|"]
    for name, c in cells.items():
      m = c["metrics"]
      lines.append(f"| {LABELS[name]} | {_fmt(m.get(prefix + 'n_real'))} | "
                   f"{_fmt(m.get(prefix + 'n_fake'))} | "
                   + " | ".join(_fmt(m.get(prefix + k)) for k in METRICS)
                   + f" | {_fmt(m.get(prefix + 'fid_reliable'))} |")
    lines.append("")
  from jaxsynth.metrics import plots  # pylint: disable=import-outside-toplevel
  charts = []
  for metric in ("kid_mean", "precision", "coverage"):
    name = f"per_class_{metric}.png"
    plots.write_png(os.path.join(OUT, name), plots.metric_bars(
        {LABELS[n]: c["metrics"] for n, c in cells.items()}, metric,
        title=f"{metric} per class (A = real train, classifier features)"))
    charts.append(f"![{metric}](generation_metrics/{name})")
  lines += ["#### per-class charts", "", " ".join(charts), ""]
  lines += ["#### acceptance", "", "| filter | class | attempted | accepted | rate |",
            "|---|---|---|---|---|"]
  for name in ("classifier_filter", "realism_class_filter", "topped_up"):
    acceptance = cells[name].get("acceptance") or cells[name]["task_metrics"].get("acceptance")
    for cls, a in acceptance["per_class"].items():
      lines.append(f"| {LABELS[name]} | {cls} | {a['attempted']} | {a['accepted']} | "
                   f"{_fmt(a['acceptance_rate'])} |")
  lines.append("")
  table = "\n".join(lines)
  marker_start, marker_end = "<!-- tables: start -->", "<!-- tables: end -->"
  if os.path.exists(DOC):
    with open(DOC, encoding="utf-8") as f:
      text = f.read()
  else:
    text = f"# Generation metrics\n\n{marker_start}\n{marker_end}\n"
  head, _, rest = text.partition(marker_start)
  _, _, tail = rest.partition(marker_end)
  with open(DOC, "w", encoding="utf-8") as f:
    f.write(f"{head}{marker_start}\n{table}\n{marker_end}{tail}")


if __name__ == "__main__":
  main()
