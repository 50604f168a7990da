"""The fault-injection campaign (issue #9): SIGKILL every task at random and targeted instants,
rerun the same command, and check the end state against an uninterrupted run.

  python bench/faults.py --kills 50                  # about 15 min on 2 CPU cores
  python bench/faults.py --kills 8 --tasks sample    # one task
  python bench/faults.py --kills 50 --out docs/results/faults.json

For each task of tests/faults/harness.py (train_classifier, evaluate, train_diffusion, sample)
it runs the uninterrupted reference once, then chains on fresh workdirs: each chain kills the
same command `--per-chain` times in a row (each rerun resumes the killed one) and lets a last
run finish. A kill is either uniform over the reference's wall time (`after:SECONDS`) or at a
failpoint of the task (`point:NAME@n`, jaxsynth/faults.py), alternately. A chain counts as
recovered when its last run exits 0, as identical when its outcome equals the reference
(training: bit-identical parameters of every kept checkpoint, metrics, log; sweeps: byte-
identical shards and manifest, and no sample lost or duplicated; evaluate: metrics and
predictions). Kills that land after the run already finished are reported as not landed.

Finished chains are appended to RUNS/chains.jsonl and skipped on a rerun with the same seed
(the campaign resumes). The last stdout line is one JSON object; --out also writes it.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import random
import shutil
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from tests.faults import harness  # pylint: disable=wrong-import-position


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--kills", type=int, default=50, help="kills in all, over the tasks")
  parser.add_argument("--per-chain", type=int, default=3, help="kills in a row on one workdir")
  parser.add_argument("--tasks", default=",".join(harness.CASES),
                      help="comma-separated cases of tests/faults/harness.py")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--runs", default=os.path.join(ROOT, "runs", "faults"),
                      help="work directory of the campaign (references, chains, chains.jsonl)")
  parser.add_argument("--out", default="", help="also write the JSON summary here")
  return parser.parse_args(argv)


def kill_plan(case: harness.TaskCase, wall: float, count: int, rng: random.Random) -> list[str]:
  """`count` kills: alternately uniform over the wall time and at a random failpoint hit."""
  kills = []
  for i in range(count):
    if i % 2 == 0:
      kills.append(f"after:{rng.uniform(0.0, wall):.2f}")
    else:
      kills.append(f"point:{rng.choice(case.points)}@{rng.randint(1, 3)}")
  return kills


def run_chain(case, inputs, reference, workdir, kills) -> dict:
  """One chain on a fresh workdir: the kills, the final run, the comparison."""
  shutil.rmtree(workdir, ignore_errors=True)
  t0 = time.perf_counter()
  records = harness.run_with_kills(case.args(inputs), workdir, kills)
  final = records[-1]
  result = {
      "task": case.name, "kills": kills,
      "landed": [r.kill for r in records[:-1] if r.killed],
      "not_landed": [r.kill for r in records[:-1] if not r.killed],
      "unexpected_exits": [{"kill": r.kill, "returncode": r.returncode,
                            "stderr": r.stderr_tail[-600:]}
                           for r in records[:-1] if not r.killed and r.returncode != 0],
      "final_returncode": final.returncode, "seconds": round(time.perf_counter() - t0, 1)}
  if final.returncode != 0:
    result.update(recovered=False, differences=["final run failed"],
                  stderr=final.stderr_tail[-1500:])
    return result
  outcome = case.outcome(workdir)
  result.update(recovered=True, differences=harness.compare(reference, outcome))
  if case.samples:
    result["samples"] = harness.sample_accounting(outcome, case.samples)
  return result


def summarise(chains: list[dict], references: dict) -> dict:
  """Per-task and total counts of the campaign."""
  tasks = {}
  for name in references:
    mine = [c for c in chains if c["task"] == name]
    tasks[name] = {
        "reference_seconds": round(references[name], 1),
        "chains": len(mine),
        "kills_attempted": sum(len(c["kills"]) for c in mine),
        "kills_landed": sum(len(c["landed"]) for c in mine),
        "kills_at_failpoints": sum(k.startswith("point:") for c in mine for k in c["landed"]),
        "recovered": sum(c["recovered"] for c in mine),
        "identical": sum(c["recovered"] and not c["differences"] for c in mine),
        "corrupt": sum(bool(c["differences"]) for c in mine),
        "unexpected_exits": sum(len(c["unexpected_exits"]) for c in mine),
        "samples_lost": sum(c.get("samples", {}).get("lost", 0) for c in mine),
        "samples_duplicated": sum(c.get("samples", {}).get("duplicated", 0) for c in mine),
    }
  total = {k: sum(t[k] for t in tasks.values()) for k in next(iter(tasks.values()))
           if k != "reference_seconds"}
  return {"tasks": tasks, "total": total}


def machine() -> dict:
  """CPU model and flags of this machine, and the jax version."""
  model, flags = platform.processor(), []
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      for line in f:
        if line.startswith("model name") and not flags:
          model = line.split(":", 1)[1].strip()
        if line.startswith("flags"):
          flags = sorted({w for w in line.split(":", 1)[1].split()
                          if w in ("avx2", "avx512f", "avx512_bf16", "amx_bf16")})
          break
  except OSError:
    pass
  import jax  # pylint: disable=import-outside-toplevel
  return {"cpu": model, "cpu_flags": flags, "cpus": os.cpu_count(), "jax": jax.__version__,
          "python": platform.python_version()}


def main(argv=None) -> dict:
  """Runs (or resumes) the campaign; prints and returns its JSON summary."""
  args = parse_args(argv)
  names = [n.strip() for n in args.tasks.split(",") if n.strip()]
  for name in names:
    if name not in harness.CASES:
      raise SystemExit(f"unknown task {name!r}; use {', '.join(harness.CASES)}")
  needed = []
  for name in names:  # the cases a task reads come first
    needed += [n for n in harness.CASES[name].needs if n not in needed]
    needed += [name] if name not in needed else []
  os.makedirs(args.runs, exist_ok=True)
  journal = os.path.join(args.runs, "chains.jsonl")
  done = []
  if os.path.exists(journal):
    with open(journal, encoding="utf-8") as f:
      done = [c for c in map(json.loads, f) if c.get("seed") == args.seed]
  t0 = time.perf_counter()
  inputs, outcomes, walls = {}, {}, {}
  for name in needed:
    workdir = os.path.join(args.runs, "reference", name)
    shutil.rmtree(workdir, ignore_errors=True)
    outcomes[name], walls[name] = harness.reference_run(harness.CASES[name], workdir, inputs)
    inputs[name] = workdir
    print(f"reference {name}: {walls[name]:.1f} s", file=sys.stderr, flush=True)
  chains_per_task = max(1, -(-args.kills // (args.per_chain * len(names))))
  chains = []
  for name in names:
    case = harness.CASES[name]
    for k in range(chains_per_task):
      previous = [c for c in done if c["task"] == name and c["chain"] == k]
      if previous:
        chains.append(previous[0])
        continue
      rng = random.Random(f"{args.seed}-{name}-{k}")
      kills = kill_plan(case, walls[name], args.per_chain, rng)
      result = run_chain(case, inputs, outcomes[name],
                         os.path.join(args.runs, "chains", f"{name}-{k}"), kills)
      result.update(chain=k, seed=args.seed)
      chains.append(result)
      with open(journal, "a", encoding="utf-8") as f:
        f.write(json.dumps(result) + "\n")
      print(f"{name} chain {k}: landed {len(result['landed'])}/{len(kills)}, "
            f"{'identical' if result['recovered'] and not result['differences'] else 'DIFFERS'}"
            f" {result['differences'] or ''} ({result['seconds']} s)", file=sys.stderr,
            flush=True)
  summary = summarise(chains, {n: walls[n] for n in names})
  out = {"benchmark": "faults", "date": datetime.date.today().isoformat(),
         "command": "python bench/faults.py " + " ".join(argv or sys.argv[1:]),
         "settings": {"kills": args.kills, "per_chain": args.per_chain, "seed": args.seed,
                      "chains_per_task": chains_per_task},
         "machine": machine(), "wall_seconds": round(time.perf_counter() - t0, 1),
         **summary,
         "failures": [c for c in chains if c["differences"] or c["unexpected_exits"]]}
  text = json.dumps(out, sort_keys=True)
  if args.out:
    with open(args.out, "w", encoding="utf-8") as f:
      f.write(json.dumps(out, indent=2, sort_keys=True) + "\n")
  print(text)
  return out


if __name__ == "__main__":
  main()
