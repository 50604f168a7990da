"""Real-data table of the classic imbalance recipes (issue #3, item 4).

Runs every (dataset, recipe, seed) as its own `python -m jaxsynth.main` subprocess under the
MedMNIST v2 protocol (Adam 1e-3, batch 128, lr x0.1 at 50% and 75% of training, best checkpoint
by validation AUC), then aggregates the runs' metrics.json into a markdown table (mean ± std over
seeds of the test metrics) with the exact command of every run.

  python bench/classic_recipes.py                                   # 4 sets x all recipes x 3 seeds
  python bench/classic_recipes.py --datasets breastmnist --recipes ce,focal --seeds 0 \\
      --epochs 2 --width 8 --runs /tmp/ct --out /tmp/ct/table.md    # smoke test
  python bench/classic_recipes.py --aggregate-only                  # rebuild the table only
  python bench/classic_recipes.py --jobs 8 --deadline 540 --prune-checkpoints   # one GPU, 8 at once

A run whose WORKDIR/metrics.json exists is skipped, so the driver resumes where it stopped (and an
unfinished jaxsynth run resumes from its own checkpoint). The decoupled recipes (crt, lws, tau_norm,
multistage_sampler) take the `ce` run of the same dataset and seed as their stage 1
(`recipe.stage1_workdir`), as Kang et al. do, so they start once it has finished. Runs are ordered
seed-major (every cell gets seed 0 before any gets seed 1) so an interrupted sweep leaves a table
with fewer seeds rather than empty cells. With --jobs N, N runs share the machine (one GPU fits
many small ResNet-18 runs). Each run leaves, next to its WORKDIR
(RUNS/DATASET/RECIPE/seedS), seedS.command.json (argv, return code, wall seconds) and seedS.log
(its stdout and stderr). Progress goes to stderr; the last stdout line is one JSON object.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import json
import math
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time

import signal
import threading

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
DECOUPLED = ("crt", "lws", "tau_norm", "multistage_sampler")
STAGE1_RECIPE = "ce"


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
  p.add_argument("--dataset-epochs", default="", metavar="NAME=E,...",
                 help="per-dataset epochs overriding --epochs, e.g. chula_rbc11=20")
  p.add_argument("--width", type=int, default=64, help="model.width (ResNet-18 first stage)")
  p.add_argument("--batch", type=int, default=128)
  p.add_argument("--model", default="resnet18")
  p.add_argument("--stage2-epochs", type=float, default=0.0,
                 help="recipe.stage2_epochs of crt/lws/multistage_sampler; 0 keeps the config's")
  p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                 help="extra --config.KEY=VALUE override for every run (repeatable)")
  p.add_argument("--runs", default="runs/classic_recipes", help="root of the run directories")
  p.add_argument("--out", default=os.path.join("docs", "results", "classic_recipes.md"))
  p.add_argument("--notes", default=os.path.join("docs", "results", "classic_recipes_notes.md"),
                 help="markdown put under the table's header when the file exists (findings)")
  p.add_argument("--aggregate-only", action="store_true", help="only rebuild the table")
  p.add_argument("--timeout", type=float, default=0.0, help="seconds per run; 0 = none")
  p.add_argument("--jobs", type=int, default=1, help="runs at a time (they share the devices)")
  p.add_argument("--deadline", type=float, default=0.0,
                 help="seconds: no run starts that its dataset's slowest finished run says would "
                      "end after this, and at this time running runs are stopped (SIGTERM: they "
                      "checkpoint; a rerun resumes them); 0 = none")
  p.add_argument("--reuse-stage1", action=argparse.BooleanOptionalAction, default=True,
                 help="decoupled recipes use the ce run of their dataset and seed as stage 1")
  p.add_argument("--prune-checkpoints", action="store_true",
                 help="delete a finished run's checkpoints (ce runs' are kept: stage 1 of others)")
  p.add_argument("--compile-cache", default="",
                 help="JAX persistent compilation cache directory shared by the runs")
  args = p.parse_args(argv)
  args.datasets = [d for d in args.datasets.split(",") if d]
  all_recipes = recipe_variants()
  args.recipes = all_recipes if args.recipes == "all" else [r for r in args.recipes.split(",") if r]
  unknown = [r for r in args.recipes if r not in all_recipes]
  if unknown:
    p.error(f"unknown recipe(s) {unknown}; configs/recipes.py lists {all_recipes}")
  args.seeds = [int(s) for s in args.seeds.split(",") if s != ""]
  try:
    args.dataset_epochs = {k: float(v) for k, v in (
        item.split("=", 1) for item in args.dataset_epochs.split(",") if item)}
  except ValueError:
    p.error(f"--dataset-epochs {args.dataset_epochs!r}: use NAME=EPOCHS[,NAME=EPOCHS...]")
  if args.jobs < 1:
    p.error(f"--jobs {args.jobs}: use 1 or more")
  return args


def epochs_of(args, dataset: str) -> float:
  """Training epochs of `dataset`'s runs: --dataset-epochs, else --epochs."""
  return args.dataset_epochs.get(dataset, args.epochs)


def fmt_num(x: float) -> str:
  return repr(int(x)) if float(x).is_integer() else repr(float(x))


def schedule_overrides(args, dataset: str) -> list[str]:
  """The MedMNIST v2 protocol as --config overrides; decay at 50% and 75% of the epochs."""
  epochs = epochs_of(args, dataset)
  decay = f"({fmt_num(0.5 * epochs)},{fmt_num(0.75 * epochs)})"
  out = [f"--config.train.epochs={fmt_num(epochs)}",
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


def stage1_source(args, dataset: str, recipe: str, seed: int) -> str | None:
  """The ce workdir a decoupled recipe takes as stage 1 (None: it trains its own)."""
  if not args.reuse_stage1 or recipe not in DECOUPLED or STAGE1_RECIPE not in args.recipes:
    return None
  return run_paths(args.runs, dataset, STAGE1_RECIPE, seed)["workdir"]


def build_command(args, dataset: str, recipe: str, seed: int) -> list[str]:
  cmd = ["python", "-m", "jaxsynth.main", "--config", f"configs/recipes.py:{recipe},npz",
         "--workdir", run_paths(args.runs, dataset, recipe, seed)["workdir"],
         f"--config.data.path={os.path.join(args.data_dir, dataset + '.npz')}",
         f"--config.seed={seed}"] + schedule_overrides(args, dataset)
  stage1 = stage1_source(args, dataset, recipe, seed)
  if stage1:
    cmd.append(f"--config.recipe.stage1_workdir={stage1}")
  return cmd


def write_json_atomic(path: str, obj) -> None:
  write_atomic(path, json.dumps(obj, indent=2) + "\n")


def write_atomic(path: str, text: str) -> None:
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), prefix=".tmp-")
  with os.fdopen(fd, "w") as f:
    f.write(text)
  os.replace(tmp, path)


def run_env(args) -> dict:
  """The runs' environment: several runs on one GPU allocate as they go; optional shared cache."""
  env = dict(os.environ)
  if args.jobs > 1:
    env.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
  if args.compile_cache:
    env["JAX_COMPILATION_CACHE_DIR"] = os.path.abspath(args.compile_cache)
  return env


def prune_checkpoints(workdir: str) -> None:
  """Deletes every `checkpoints` directory under a finished run's workdir."""
  for root, dirs, _ in os.walk(workdir):
    if "checkpoints" in dirs:
      shutil.rmtree(os.path.join(root, "checkpoints"), ignore_errors=True)
      dirs.remove("checkpoints")


def run_process(cmd: list[str], log_path: str, env: dict | None = None,
                stop: threading.Event | None = None, timeout: float = 0.0) -> int:
  """Runs `python ARGS` (`cmd` with this interpreter) from the repository root, output appended
  to `log_path`; returns its exit status. When `stop` is set or `timeout` seconds (0 = none)
  pass, it gets SIGTERM (a jaxsynth run checkpoints and exits 3), then SIGKILL after 120 s; a
  timeout returns 124."""
  t0 = time.time()
  with open(log_path, "a", encoding="utf-8") as lf:
    proc = subprocess.Popen([sys.executable] + cmd[1:], cwd=ROOT, stdout=lf,
                            stderr=subprocess.STDOUT, env=env)
    while True:
      try:
        return proc.wait(timeout=1.0)
      except subprocess.TimeoutExpired:
        timed_out = bool(timeout) and time.time() - t0 > timeout
        if timed_out or (stop is not None and stop.is_set()):
          proc.send_signal(signal.SIGTERM)
          try:
            rc = proc.wait(timeout=120)
          except subprocess.TimeoutExpired:
            proc.kill()
            rc = proc.wait()
          return 124 if timed_out else rc


def execute(args, dataset, recipe, seed, stop: threading.Event | None = None) -> dict:
  """Runs one job unless its metrics.json exists; returns its status record.

  When `stop` is set while the job runs, the job gets SIGTERM (it saves a checkpoint and exits 3).
  """
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
  rc = run_process(cmd, paths["log"], run_env(args), stop, args.timeout)
  record.update(rc=rc, wall_s=round(time.time() - t0, 1))
  write_json_atomic(paths["command"], record)
  ok = rc == 0 and os.path.exists(os.path.join(paths["workdir"], "metrics.json"))
  log(f"  {dataset}/{recipe}/seed{seed} "
      f"{'ok' if ok else 'FAILED rc=%d (see %s)' % (rc, paths['log'])} in {record['wall_s']} s")
  if ok and args.prune_checkpoints and recipe != STAGE1_RECIPE:
    prune_checkpoints(paths["workdir"])
  return {"status": "ran" if ok else "failed", "rc": rc, "wall_s": record["wall_s"],
          "command": record["command"]}


def plan_jobs(args, infos) -> list[tuple[str, str, int]]:
  """Every (dataset, recipe, seed) to run: seed-major; ce, then the decoupled, then the rest."""
  jobs = []
  for seed in args.seeds:
    for recipe in sorted(args.recipes, key=lambda r: (r != STAGE1_RECIPE, r not in DECOUPLED)):
      for dataset in args.datasets:
        if infos[dataset].get("error"):
          continue
        if recipe in TWO_CLASS_ONLY and infos[dataset]["num_classes"] != 2:
          continue
        jobs.append((dataset, recipe, seed))
  return jobs


def run_all(args, infos, t0: float) -> dict:
  """Runs the planned jobs, --jobs at a time; decoupled ones after their stage-1 ce run."""
  pending, statuses, walls = plan_jobs(args, infos), {}, {}
  stop = threading.Event()
  with concurrent.futures.ThreadPoolExecutor(max_workers=args.jobs) as pool:
    running = {}
    while pending or running:
      elapsed = time.time() - t0
      if args.deadline and elapsed >= args.deadline:
        stop.set()
      for job in list(pending):
        if len(running) >= args.jobs or stop.is_set():
          break
        dataset, recipe, seed = job
        stage1 = stage1_source(args, dataset, recipe, seed)
        stage1_job = (dataset, STAGE1_RECIPE, seed)
        if stage1 and (stage1_job in pending or stage1_job in running.values()):
          continue  # its stage 1 has not finished yet
        if stage1 and not os.path.exists(os.path.join(stage1, "metrics.json")):
          pending.remove(job)
          statuses[f"{dataset}/{recipe}/seed{seed}"] = {
              "status": "failed", "rc": None, "command": "",
              "reason": f"its stage 1 ({stage1}) did not finish"}
          continue
        expected = walls.get(dataset, 0.0)
        if args.deadline and elapsed + expected > args.deadline:
          continue  # would not finish in time; a shorter job of another dataset may
        pending.remove(job)
        running[pool.submit(execute, args, dataset, recipe, seed, stop)] = job
      if not running:
        if pending:
          log(f"deadline: {len(pending)} run(s) not started")
          for dataset, recipe, seed in pending:
            statuses[f"{dataset}/{recipe}/seed{seed}"] = {"status": "not_started"}
        break
      done, _ = concurrent.futures.wait(running, timeout=5.0,
                                        return_when=concurrent.futures.FIRST_COMPLETED)
      for fut in done:
        dataset, recipe, seed = running.pop(fut)
        status = fut.result()
        statuses[f"{dataset}/{recipe}/seed{seed}"] = status
        if status["status"] == "ran":
          walls[dataset] = max(walls.get(dataset, 0.0), status["wall_s"])
  return statuses


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
           "E epochs (given per dataset below), lr x0.1 at epochs E/2 and 3E/4 (MedMNIST v2 "
           "protocol), native resolution. The exact command of every run is listed under its "
           "table. For two classes, sensitivity is the recall of class 1 "
           "(`evaluate.positive_class`), specificity that of class 0."
           + (" The decoupled recipes (crt, lws, tau_norm, multistage_sampler) take the ce run "
              "of the same seed as their stage 1 (`recipe.stage1_workdir`), so their stage 1 "
              "is the ce row." if args.reuse_stage1 else ""), ""]
  if args.notes and os.path.exists(args.notes):
    with open(args.notes) as f:
      lines += [f.read().strip(), ""]
  for dataset in args.datasets:
    info = infos[dataset]
    lines += [f"## {dataset}", ""]
    if info.get("error"):
      lines += [f"Not run: {info['error']}", ""]
      continue
    counts = "; ".join(f"{n}: {c}" for n, c in zip(info["class_names"], info["train_counts"]))
    epochs = epochs_of(args, dataset)
    lines += [f"{info['num_classes']} classes; train counts: {counts}. {fmt_num(epochs)} epochs "
              f"(lr x0.1 at {fmt_num(0.5 * epochs)} and {fmt_num(0.75 * epochs)}).", ""]
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
  device_file = os.path.join(args.runs, "device.json")
  if args.aggregate_only and os.path.exists(device_file):
    with open(device_file) as f:
      device = json.load(f)["device"]  # where the runs ran, not where the table is rebuilt
  else:
    device = device_summary()
  log(f"device: {device}")
  if not args.aggregate_only:
    write_json_atomic(device_file, {"device": device})
    statuses = run_all(args, infos, t0)
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
