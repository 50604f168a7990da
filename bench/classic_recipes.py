"""Real-data table of the classic imbalance recipes (issue #3, item 4).

Runs every (dataset, recipe, seed) as its own `python -m jaxsynth.main` subprocess under the
MedMNIST v2 protocol (Adam 1e-3, batch 128, lr x0.1 at 50% and 75% of training, best checkpoint
by validation AUC), then aggregates the runs' metrics.json into a markdown table (mean ± std over
seeds of the test metrics) with the exact command of every run.

  python bench/classic_recipes.py                                   # 4 sets x all recipes x 3 seeds
  python bench/classic_recipes.py --datasets breastmnist --recipes ce,focal --seeds 0 \\
      --epochs 2 --width 8 --runs /tmp/ct --out /tmp/ct/table.md    # smoke test
  python bench/classic_recipes.py --aggregate-only                  # rebuild the table only

A run whose WORKDIR/metrics.json exists is skipped, so the driver resumes where it stopped (and an
unfinished jaxsynth run resumes from its own checkpoint). Each run leaves, next to its WORKDIR
(RUNS/DATASET/RECIPE/seedS), seedS.command.json (argv, return code, wall seconds) and seedS.log
(its stdout and stderr). Progress goes to stderr; the last stdout line is one JSON object.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import re
import shlex
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPES_FILE = os.path.join(ROOT, "configs", "recipes.py")
DEFAULT_DATASETS = ("retinamnist", "pneumoniamnist", "breastmnist", "chula_rbc11")
# Published MedMNIST v2 ResNet-18 (28) test figures (Yang et al. 2023, Table 3): AUC, ACC.
MEDMNIST_REFERENCE = {"pneumoniamnist": (0.944, 0.854), "breastmnist": (0.901, 0.863),
                      "retinamnist": (0.717, 0.524)}
COMMON_METRICS = ("macro_f1", "balanced_accuracy", "mcc", "auc", "accuracy")
BINARY_METRICS = ("sensitivity", "specificity", "harmonic_mean")
TWO_CLASS_ONLY = ("bce",)


def log(msg: str) -> None:
  print(f"[classic_recipes] {msg}", file=sys.stderr, flush=True)


def recipe_variants() -> list[str]:
  """The variants listed in configs/recipes.py's docstring, in order ("  name   text" lines)."""
  with open(RECIPES_FILE) as f:
    text = f.read()
  doc = text.split('"""')[1]
  names = []
  for line in doc.splitlines():
    m = re.match(r"^  ([a-z_0-9]+)\s{2,}\S", line)
    if m and m.group(1) not in names:
      names.append(m.group(1))
  return names


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--datasets", default=",".join(DEFAULT_DATASETS),
                 help="comma-separated names; NAME reads DATA_DIR/NAME.npz")
  p.add_argument("--data-dir", default=os.path.join("..", "shared", "data"))
  p.add_argument("--recipes", default="all", help="comma-separated variants of configs/recipes.py")
  p.add_argument("--seeds", default="0,1,2")
  p.add_argument("--epochs", type=float, default=100.0)
  p.add_argument("--width", type=int, default=64, help="model.width (ResNet-18 first stage)")
  p.add_argument("--batch", type=int, default=128)
  p.add_argument("--model", default="resnet18")
  p.add_argument("--stage2-epochs", type=float, default=0.0,
                 help="recipe.stage2_epochs of crt/lws/multistage_sampler; 0 keeps the config's")
  p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                 help="extra --config.KEY=VALUE override for every run (repeatable)")
  p.add_argument("--runs", default="runs/classic_recipes", help="root of the run directories")
  p.add_argument("--out", default=os.path.join("docs", "results", "classic_recipes.md"))
  p.add_argument("--aggregate-only", action="store_true", help="only rebuild the table")
  p.add_argument("--timeout", type=float, default=0.0, help="seconds per run; 0 = none")
  args = p.parse_args(argv)
  args.datasets = [d for d in args.datasets.split(",") if d]
  all_recipes = recipe_variants()
  args.recipes = all_recipes if args.recipes == "all" else [r for r in args.recipes.split(",") if r]
  unknown = [r for r in args.recipes if r not in all_recipes]
  if unknown:
    p.error(f"unknown recipe(s) {unknown}; configs/recipes.py lists {all_recipes}")
  args.seeds = [int(s) for s in args.seeds.split(",") if s != ""]
  return args


def fmt_num(x: float) -> str:
  return repr(int(x)) if float(x).is_integer() else repr(float(x))


def schedule_overrides(args) -> list[str]:
  """The MedMNIST v2 protocol as --config overrides; decay at 50% and 75% of args.epochs."""
  decay = f"({fmt_num(0.5 * args.epochs)},{fmt_num(0.75 * args.epochs)})"
  out = [f"--config.train.epochs={fmt_num(args.epochs)}",
         f"--config.train.batch_size={args.batch}",
         "--config.train.optimizer=adam", "--config.train.learning_rate=0.001",
         "--config.train.schedule=step", f"--config.train.decay_epochs={decay}",
         "--config.train.decay_factor=0.1", "--config.train.select_metric=auc",
         "--config.train.select_mode=max",
         f"--config.model.name={args.model}", f"--config.model.width={args.width}"]
  if args.stage2_epochs > 0:
    out.append(f"--config.recipe.stage2_epochs={fmt_num(args.stage2_epochs)}")
  out += [f"--config.{kv}" for kv in args.set]
  return out


def dataset_info(path: str) -> dict:
  with np.load(path, allow_pickle=False) as d:
    counts = np.bincount(np.asarray(d["train_labels"]).ravel().astype(int))
    names = [str(n) for n in d["class_names"]] if "class_names" in d else []
  names = names if len(names) == len(counts) else [str(i) for i in range(len(counts))]
  order = sorted(range(len(counts)), key=lambda c: (counts[c], c))
  return {"num_classes": int(len(counts)), "train_counts": [int(c) for c in counts],
          "class_names": names, "rarest": order[:2]}


def run_paths(runs: str, dataset: str, recipe: str, seed: int) -> dict:
  base = os.path.join(runs, dataset, recipe)
  return {"workdir": os.path.join(base, f"seed{seed}"),
          "command": os.path.join(base, f"seed{seed}.command.json"),
          "log": os.path.join(base, f"seed{seed}.log")}


def build_command(args, dataset: str, recipe: str, seed: int) -> list[str]:
  return ["python", "-m", "jaxsynth.main", "--config", f"configs/recipes.py:{recipe},npz",
          "--workdir", run_paths(args.runs, dataset, recipe, seed)["workdir"],
          f"--config.data.path={os.path.join(args.data_dir, dataset + '.npz')}",
          f"--config.seed={seed}"] + schedule_overrides(args)


def write_json_atomic(path: str, obj) -> None:
  write_atomic(path, json.dumps(obj, indent=2) + "\n")


def write_atomic(path: str, text: str) -> None:
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), prefix=".tmp-")
  with os.fdopen(fd, "w") as f:
    f.write(text)
  os.replace(tmp, path)


def execute(args, dataset, recipe, seed) -> dict:
  """Runs one job unless its metrics.json exists; returns its status record."""
  paths = run_paths(args.runs, dataset, recipe, seed)
  cmd = build_command(args, dataset, recipe, seed)
  if os.path.exists(os.path.join(paths["workdir"], "metrics.json")):
    return {"status": "done_before", "command": shlex.join(cmd)}
  os.makedirs(os.path.dirname(paths["workdir"]), exist_ok=True)
  record = {"argv": cmd, "command": shlex.join(cmd), "cwd": ROOT, "python": sys.executable,
            "started": datetime.datetime.now().isoformat(timespec="seconds")}
  write_json_atomic(paths["command"], record)
  log(f"run {dataset}/{recipe}/seed{seed}: {shlex.join(cmd)}")
  t0 = time.time()
  with open(paths["log"], "w") as lf:
    try:
      rc = subprocess.run([sys.executable] + cmd[1:], cwd=ROOT, stdout=lf, stderr=subprocess.STDOUT,
                          timeout=args.timeout or None).returncode
    except subprocess.TimeoutExpired:
      rc = 124
  record.update(rc=rc, wall_s=round(time.time() - t0, 1))
  write_json_atomic(paths["command"], record)
  ok = rc == 0 and os.path.exists(os.path.join(paths["workdir"], "metrics.json"))
  log(f"  {'ok' if ok else 'FAILED rc=%d (see %s)' % (rc, paths['log'])} in {record['wall_s']} s")
  return {"status": "ran" if ok else "failed", "rc": rc, "wall_s": record["wall_s"],
          "command": record["command"]}


def mean_std(values) -> tuple[float, float]:
  v = np.asarray([x for x in values if x is not None and math.isfinite(x)], float)
  if v.size == 0:
    return float("nan"), float("nan")
  return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else float("nan")


def cell(values) -> str:
  m, s = mean_std(values)
  if math.isnan(m):
    return "—"
  return f"{m:.3f}" if math.isnan(s) else f"{m:.3f} ± {s:.3f}"


def collect(args, dataset, recipe, info) -> dict:
  """Reads the test metrics of every seed; lists missing and failed seeds."""
  per_seed, missing, commands = {}, [], {}
  for seed in args.seeds:
    paths = run_paths(args.runs, dataset, recipe, seed)
    mfile = os.path.join(paths["workdir"], "metrics.json")
    cmd = shlex.join(build_command(args, dataset, recipe, seed))
    if os.path.exists(paths["command"]):
      with open(paths["command"]) as f:
        cmd = json.load(f).get("command", cmd)
    commands[seed] = cmd
    if not os.path.exists(mfile):
      reason = "not run"
      if os.path.exists(paths["command"]):
        with open(paths["command"]) as f:
          rec = json.load(f)
        reason = f"failed rc={rec['rc']} (log {paths['log']})" if "rc" in rec else "unfinished"
      missing.append({"seed": seed, "reason": reason})
      continue
    with open(mfile) as f:
      per_seed[seed] = json.load(f)["test"]
  keys = COMMON_METRICS + (BINARY_METRICS if info["num_classes"] == 2 else ())
  agg = {}
  for k in keys:
    m, s = mean_std([per_seed[s].get(k) for s in per_seed])
    agg[k] = {"mean": m, "std": s, "cell": cell([per_seed[s].get(k) for s in per_seed])}
  for c in info["rarest"]:
    vals = [per_seed[s]["per_class_accuracy"][c] for s in per_seed]
    m, s = mean_std(vals)
    agg[f"class{c}_accuracy"] = {"mean": m, "std": s, "cell": cell(vals)}
  return {"seeds_done": sorted(per_seed), "missing": missing, "commands": commands,
          "metrics": agg}


def nan_to_none(x):
  if isinstance(x, dict):
    return {k: nan_to_none(v) for k, v in x.items()}
  if isinstance(x, list):
    return [nan_to_none(v) for v in x]
  return None if isinstance(x, float) and math.isnan(x) else x


def render(args, results, infos, device) -> str:
  lines = ["# Classic imbalance recipes on real data", "",
           f"Generated by `bench/classic_recipes.py` on "
           f"{datetime.date.today().isoformat()} ({device}). Test split, best checkpoint by "
           "validation AUC; mean ± sample std over seeds (one seed: the value alone). Binary "
           "sets use the argmax threshold unless a `--config.evaluate.threshold` override is "
           "listed below.", "",
           f"Schedule: {args.model} width {args.width}, Adam lr 1e-3, batch {args.batch}, "
           f"{fmt_num(args.epochs)} epochs, lr x0.1 at epochs {fmt_num(0.5 * args.epochs)} and "
           f"{fmt_num(0.75 * args.epochs)} (MedMNIST v2 protocol), native resolution. "
           f"Overrides common to every run: `{shlex.join(schedule_overrides(args))}`. For two "
           "classes, sensitivity is the recall of class 1 (`evaluate.positive_class`), "
           "specificity that of class 0.", ""]
  for dataset in args.datasets:
    info = infos[dataset]
    lines += [f"## {dataset}", ""]
    if info.get("error"):
      lines += [f"Not run: {info['error']}", ""]
      continue
    counts = "; ".join(f"{n}: {c}" for n, c in zip(info["class_names"], info["train_counts"]))
    lines += [f"{info['num_classes']} classes; train counts: {counts}.", ""]
    if dataset in MEDMNIST_REFERENCE:
      auc, acc = MEDMNIST_REFERENCE[dataset]
      lines += [f"Published MedMNIST v2 ResNet-18 (28) test figures: AUC {auc}, ACC {acc}.", ""]
    keys = list(COMMON_METRICS) + (list(BINARY_METRICS) if info["num_classes"] == 2 else [])
    heads = ["macro-F1", "bal. acc", "MCC", "AUC", "acc"] + (
        ["sens.", "spec.", "harm. mean"] if info["num_classes"] == 2 else [])
    rare = info["rarest"]
    heads += [f"acc {info['class_names'][c]} (n={info['train_counts'][c]})" for c in rare]
    keys += [f"class{c}_accuracy" for c in rare]
    lines += ["| recipe | " + " | ".join(heads) + " | seeds |",
              "|---" * (len(heads) + 2) + "|"]
    missing_lines, command_lines = [], []
    for recipe in args.recipes:
      r = results[dataset][recipe]
      if r.get("not_applicable"):
        lines.append(f"| {recipe} | " + " | ".join(["n/a"] * len(heads))
                     + f" | 0 ({r['not_applicable']}) |")
        continue
      n = len(r["seeds_done"])
      lines.append(f"| {recipe} | " + " | ".join(r["metrics"][k]["cell"] for k in keys)
                   + f" | {n}/{len(args.seeds)} |")
      for m in r["missing"]:
        missing_lines.append(f"- {recipe} seed {m['seed']}: {m['reason']}")
      for seed, cmd in r["commands"].items():
        command_lines.append(f"{recipe} seed {seed}:\n  {cmd}")
    lines.append("")
    if missing_lines:
      lines += ["Missing or failed runs (not in the means above):", ""] + missing_lines + [""]
    lines += ["<details><summary>Exact commands (run from the repository root)</summary>", "",
              "```"] + command_lines + ["```", "", "</details>", ""]
  return "\n".join(lines)


def device_summary() -> str:
  try:
    out = subprocess.run([sys.executable, "-c", "import jax; d = jax.devices(); "
                          "print(f'{d[0].platform}: {d[0].device_kind} x{len(d)}')"],
                         capture_output=True, text=True, timeout=120, cwd=ROOT)
    dev = out.stdout.strip().splitlines()[-1] if out.stdout.strip() else "unknown device"
  except Exception:  # noqa: BLE001 - the table still gets written
    dev = "unknown device"
  return f"{dev}, {os.cpu_count()} host CPUs, {platform.node()}"


def main(argv=None) -> None:
  args = parse_args(argv)
  os.chdir(ROOT)  # relative --runs, --out and --data-dir are relative to the repository root
  t0 = time.time()
  infos, statuses = {}, {}
  for dataset in args.datasets:
    path = os.path.join(args.data_dir, dataset + ".npz")
    full = path if os.path.isabs(path) else os.path.join(ROOT, path)
    try:
      infos[dataset] = dataset_info(full)
    except (OSError, KeyError, ValueError) as e:
      infos[dataset] = {"error": f"cannot read {path}: {e}"}
      log(infos[dataset]["error"])
  device = device_summary()
  log(f"device: {device}")
  if not args.aggregate_only:
    for dataset in args.datasets:
      if infos[dataset].get("error"):
        continue
      for recipe in args.recipes:
        if recipe in TWO_CLASS_ONLY and infos[dataset]["num_classes"] != 2:
          continue
        for seed in args.seeds:
          statuses[f"{dataset}/{recipe}/seed{seed}"] = execute(args, dataset, recipe, seed)
  results = {}
  for dataset in args.datasets:
    results[dataset] = {}
    if infos[dataset].get("error"):
      continue
    for recipe in args.recipes:
      if recipe in TWO_CLASS_ONLY and infos[dataset]["num_classes"] != 2:
        results[dataset][recipe] = {"not_applicable": "two-class data only"}
        continue
      results[dataset][recipe] = collect(args, dataset, recipe, infos[dataset])
  write_atomic(args.out, render(args, results, infos, device))
  log(f"wrote {args.out}")
  missing = [f"{d}/{r}/seed{m['seed']}: {m['reason']}" for d in results
             for r, v in results[d].items() for m in v.get("missing", [])]
  table = {d: {r: ({k: {"mean": m["mean"], "std": m["std"]} for k, m in v["metrics"].items()}
                   | {"seeds": len(v["seeds_done"])}) if "metrics" in v else v
               for r, v in results[d].items()} for d in results}
  summary = {"config": {k: v for k, v in vars(args).items()},
             "device": device, "out": args.out,
             "runs_ran": sum(s["status"] == "ran" for s in statuses.values()),
             "runs_skipped_done": sum(s["status"] == "done_before" for s in statuses.values()),
             "runs_failed": sorted(k for k, s in statuses.items() if s["status"] == "failed"),
             "missing": missing,
             "datasets_unreadable": {d: i["error"] for d, i in infos.items() if i.get("error")},
             "wall_s": round(time.time() - t0, 1),
             "run_wall_s": {k: s.get("wall_s") for k, s in statuses.items() if "wall_s" in s},
             "table": table}
  print(json.dumps(nan_to_none(summary)))


if __name__ == "__main__":
  main()
