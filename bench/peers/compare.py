"""Alternating runner: a jaxsynth benchmark against its PyTorch/diffusers peer, round by round.

Run from the repository root:
  python bench/peers/compare.py train_step --rounds 3 [--dtype float32] [-- ARGS for both sides]
  python bench/peers/compare.py sampler --rounds 3 --jax-args="--dtype bfloat16" \
      --peer-args="--dtype float32" --out /tmp/sampler_cmp.json -- --batch 16 --steps 50
Each round runs `python bench/NAME.py ...` (jaxsynth) then `python bench/peers/NAME.py ...` (peer)
in subprocesses, so both sides see the same machine load in turn. Progress goes to stderr; the
last line of stdout is one JSON object (see bench/README.md, "Peer benchmarks").
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

from bench.machine import cpu_info  # noqa: E402

BENCHMARKS = ("train_step", "diffusion_train_step", "sampler")
THROUGHPUT_KEYS = ("images_per_s", "train_images_per_s")   # the second: bench/train_step.py today
STDERR_TAIL_LINES = 40


class RunFailed(SystemExit):
  """A subprocess failed or printed no JSON; carries the one-line message."""


def log(message: str) -> None:
  """Progress to stderr, so that stdout carries only the JSON."""
  print(f"[compare] {message}", file=sys.stderr, flush=True)


def parse_args(argv=None) -> argparse.Namespace:
  """The runner's command line; everything after the first bare `--` goes to both sides."""
  argv = list(sys.argv[1:] if argv is None else argv)
  extra = []
  if "--" in argv:
    cut = argv.index("--")
    argv, extra = argv[:cut], argv[cut + 1:]
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("benchmark", choices=BENCHMARKS)
  p.add_argument("--rounds", type=int, default=3, help="runs of each side (alternating)")
  p.add_argument("--dtype", default=None, choices=("float32", "bfloat16"),
                 help="--dtype for both sides (each side's own default when omitted)")
  p.add_argument("--jax-args", default="",
                 help='args for the jaxsynth side only, e.g. --jax-args="--dtype bfloat16"')
  p.add_argument("--peer-args", default="",
                 help='args for the peer side only, e.g. --peer-args="--channels-last"')
  p.add_argument("--peer-first", action="store_true",
                 help="start each round with the peer (default: jaxsynth first)")
  p.add_argument("--timeout", type=float, default=None,
                 help="seconds allowed per subprocess (default: no limit)")
  p.add_argument("--full", action="store_true",
                 help="also embed every run's whole JSON object under 'runs'")
  p.add_argument("--out", default=None, help="also write the JSON object to this file")
  args = p.parse_args(argv)
  if args.rounds < 1:
    p.error("--rounds must be >= 1")
  args.extra = extra
  return args


def commands(args) -> dict:
  """The two argv lists; side-only args come last, so they override the shared ones."""
  shared = (["--dtype", args.dtype] if args.dtype else []) + list(args.extra)
  scripts = {"jaxsynth": os.path.join("bench", f"{args.benchmark}.py"),
             "peer": os.path.join("bench", "peers", f"{args.benchmark}.py")}
  own = {"jaxsynth": shlex.split(args.jax_args), "peer": shlex.split(args.peer_args)}
  for side, script in scripts.items():
    if not os.path.isfile(os.path.join(ROOT, script)):
      raise RunFailed(f"compare.py: {side} script {script} does not exist")
  return {side: [sys.executable, scripts[side], *shared, *own[side]] for side in scripts}


def stderr_tail(text: str) -> str:
  """The last lines of a subprocess's stderr."""
  return "\n".join(text.rstrip().splitlines()[-STDERR_TAIL_LINES:])


def run_one(side: str, round_no: int, argv: list[str], timeout: float | None) -> tuple[dict, float]:
  """Runs one benchmark subprocess; returns its last-line JSON and wall seconds."""
  command = shlex.join(argv)
  log(f"round {round_no} {side}: {command}")
  start = time.perf_counter()
  try:
    proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
  except subprocess.TimeoutExpired as e:
    tail = e.stderr.decode(errors="replace") if isinstance(e.stderr, bytes) else (e.stderr or "")
    print(stderr_tail(tail), file=sys.stderr)
    raise RunFailed(f"compare.py: {side} round {round_no} timed out after {timeout}s: "
                    f"{command}") from None
  wall = time.perf_counter() - start
  if proc.returncode != 0:
    print(stderr_tail(proc.stderr), file=sys.stderr)
    raise RunFailed(f"compare.py: {side} round {round_no} failed (rc {proc.returncode}): "
                    f"{command}")
  lines = [line for line in proc.stdout.splitlines() if line.strip()]
  try:
    result = json.loads(lines[-1])
    if not isinstance(result, dict):
      raise ValueError("not a JSON object")
  except (IndexError, ValueError) as e:
    print(stderr_tail(proc.stderr), file=sys.stderr)
    raise RunFailed(f"compare.py: {side} round {round_no} printed no JSON object on its last "
                    f"stdout line ({e}): {command}") from None
  return result, wall


def throughput(result: dict, side: str) -> float:
  """images/s of one run: `images_per_s`, else the older `train_images_per_s`."""
  for key in THROUGHPUT_KEYS:
    if isinstance(result.get(key), (int, float)):
      return float(result[key])
  raise RunFailed(f"compare.py: the {side} JSON has none of {', '.join(THROUGHPUT_KEYS)}")


def precision(result: dict):
  """The run's compute precision: `precision`, else config.dtype / model_config.dtype."""
  for value in (result.get("precision"), (result.get("config") or {}).get("dtype"),
                (result.get("model_config") or {}).get("dtype")):
    if value:
      return value
  return None


def cpu_seconds(result: dict):
  """Process CPU seconds per rep, under either side's field name."""
  for key in ("cpu_seconds_median", "step_cpu_s_median", "sampler_cpu_s_median"):
    if isinstance(result.get(key), (int, float)):
      return result[key]
  return None


def summary(runs: list[dict], ips: list[float]) -> dict:
  """One side's per-round figures and what stays the same across rounds."""
  last = runs[-1]
  return {"images_per_s": ips, "median": statistics.median(ips),
          "min": min(ips), "max": max(ips),
          "cpu_seconds_median": [cpu_seconds(r) for r in runs],
          "precision": precision(last), "params": last.get("params"),
          "batch": last.get("batch", (last.get("config") or {}).get("batch")),
          "framework": last.get("framework"), "threads": last.get("threads"),
          "versions": last.get("versions")}


def run(args) -> dict:
  """Runs the rounds, alternating the two sides, and returns the result object."""
  argv = commands(args)
  order = ("peer", "jaxsynth") if args.peer_first else ("jaxsynth", "peer")
  runs = {"jaxsynth": [], "peer": []}
  ips = {"jaxsynth": [], "peer": []}
  walls = {"jaxsynth": [], "peer": []}
  loads = {"jaxsynth": [], "peer": []}
  start = time.perf_counter()
  for round_no in range(1, args.rounds + 1):
    for side in order:
      loads[side].append(os.getloadavg()[0])
      result, wall = run_one(side, round_no, argv[side], args.timeout)
      runs[side].append(result)
      walls[side].append(wall)
      ips[side].append(throughput(result, side))
      log(f"round {round_no} {side}: {ips[side][-1]:.3f} images/s ({wall:.0f}s)")
    log(f"round {round_no}: jaxsynth / peer = {ips['jaxsynth'][-1] / ips['peer'][-1]:.3f}")
  out = {
      "benchmark": args.benchmark, "rounds": args.rounds, "order": list(order),
      "command_jaxsynth": shlex.join(argv["jaxsynth"]), "command_peer": shlex.join(argv["peer"]),
      "jaxsynth": summary(runs["jaxsynth"], ips["jaxsynth"]),
      "peer": summary(runs["peer"], ips["peer"]),
      "cpu": cpu_info(), "python": platform.python_version(),
      "config": {k: v for k, v in vars(args).items()},
      "wall_s": time.perf_counter() - start,
  }
  for side in runs:
    out[side]["wall_s"] = walls[side]
    out[side]["load_avg_1min_before"] = loads[side]
  out["ratio_of_medians"] = out["jaxsynth"]["median"] / out["peer"]["median"]
  out["ratios_per_round"] = [j / p for j, p in zip(ips["jaxsynth"], ips["peer"])]
  out["precision"] = {"jaxsynth": out["jaxsynth"]["precision"], "peer": out["peer"]["precision"]}
  out["same_precision"] = out["precision"]["jaxsynth"] == out["precision"]["peer"]
  out["same_params"] = out["jaxsynth"]["params"] == out["peer"]["params"]
  if args.full:
    out["runs"] = runs
  return out


def main(argv=None) -> None:
  """Prints progress to stderr and the result as one JSON line on stdout."""
  args = parse_args(argv)
  try:
    result = run(args)
  except RunFailed as e:
    print(e.code, file=sys.stderr)
    sys.exit(1)
  text = json.dumps(result, sort_keys=True)
  if args.out:
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
      f.write(text + "\n")
    log(f"wrote {args.out}")
  print(text, flush=True)


if __name__ == "__main__":
  main()
