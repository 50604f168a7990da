"""The cell runner of the resumable studies (bench/autoencoder_study.py, bench/gan_study.py).

A study is a module (the `spec`) that defines:
  NAME                 its name in logs and commit messages
  CELLS                {cell name: Cell(kind, needs)}; kind "run" is one jaxsynth run, other
                       kinds are the study's own (a subprocess or an in-process computation)
  command(args, name)  the argv of a cell (python first; [] for an in-process cell)
  result_of(args, name, wall, stdout)  the small JSON of a finished cell
  render(args, cells)  the document, from the committed cells
  run_only, execute    the functions below bound to the spec (so a test can patch them)
and uses `parse_args` / `main` from here. Each cell is run under --runs (checkpoints, samples,
logs: never committed); its small result is written into the repository as
<out>/<cell>.json (metrics, command, wall time, machine) and committed with --commit. A cell
whose JSON exists is skipped; a cell whose input run directory is missing (a fresh machine)
runs that input's command again first.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import shlex
import shutil
import subprocess
import sys
import time

from bench.classic_recipes import run_process, write_atomic
from bench.synthesis_recipes import _read, commit, machine_record, write_json_atomic

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclasses.dataclass(frozen=True)
class Cell:
  """One cell: how it runs and the cells whose run directories it reads."""
  kind: str              # run (one jaxsynth run) | a kind the study handles itself
  needs: tuple = ()
  subprocess: bool = True   # False: computed in process by result_of (no command)


def log(spec, msg: str) -> None:
  print(f"[{spec.NAME}] {msg}", file=sys.stderr, flush=True)


def run_dir(args, name: str) -> str:
  return os.path.join(args.runs, name)


def cell_path(args, name: str) -> str:
  return os.path.join(args.out, f"{name}.json")


def finished(args, name: str) -> bool:
  return os.path.isfile(os.path.join(run_dir(args, name), "metrics.json"))


def copy_figure(args, src: str, name: str) -> str:
  """Copies a PNG next to the cells; returns its path relative to the document's folder."""
  os.makedirs(args.out, exist_ok=True)
  shutil.copyfile(src, os.path.join(args.out, name))
  return os.path.relpath(os.path.join(args.out, name), os.path.dirname(args.doc))


def last_grid(workdir: str) -> str | None:
  """The newest grids/step-N.png of a run, or None."""
  folder = os.path.join(workdir, "grids")
  grids = sorted(os.listdir(folder)) if os.path.isdir(folder) else []
  return os.path.join(folder, grids[-1]) if grids else None


def execute(spec, args, name: str, stop_at: float) -> str:
  """Runs cell `name` (and first any missing input run); returns ran | failed | late."""
  for need in spec.CELLS[name].needs:
    if spec.CELLS[need].kind == "run" and not finished(args, need):
      status = spec.execute(args, need, stop_at) if not os.path.isfile(cell_path(args, need)) \
          else spec.run_only(args, need, stop_at)
      if status != "ran":
        return status
  return spec.run_only(args, name, stop_at, record=True)


def run_only(spec, args, name: str, stop_at: float, record: bool = False) -> str:
  """Runs the command of `name` (resuming its run); with `record`, writes and commits its JSON."""
  cell = spec.CELLS[name]
  argv = spec.command(args, name) if cell.subprocess else []
  os.makedirs(args.runs, exist_ok=True)
  log_path = run_dir(args, name) + ".log"
  t0, stdout = time.time(), ""
  if argv:
    log(spec, f"run {name}: {shlex.join(argv)}")
    if cell.kind != "run":   # a benchmark: its JSON is the last line of its stdout
      timeout = max(1.0, stop_at - time.time()) if stop_at else None
      try:
        proc = subprocess.run([sys.executable] + argv[1:], cwd=ROOT, capture_output=True,
                              text=True, timeout=timeout, check=False)
      except subprocess.TimeoutExpired:
        return "late"
      with open(log_path, "a", encoding="utf-8") as f:
        f.write(proc.stderr)
      rc, stdout = proc.returncode, proc.stdout
    else:
      rc = run_process(argv, log_path, timeout=max(1.0, stop_at - time.time()) if stop_at else 0)
      if rc == 0 and not finished(args, name):
        rc = 1
    if rc != 0:
      log(spec, f"  {name}: {'stopped at the deadline' if rc in (3, 124) else f'FAILED rc={rc}'}"
          f" (see {log_path})")
      return "late" if rc in (3, 124) else "failed"
  if record and not os.path.isfile(cell_path(args, name)):
    try:
      result = spec.result_of(args, name, time.time() - t0, stdout)
    except Exception as e:  # pylint: disable=broad-except  (one cell's failure, logged)
      log(spec, f"  {name}: FAILED computing its result ({type(e).__name__}: {e})")
      return "failed"
    wall = round(time.time() - t0, 1)
    result.update(cell=name, command=shlex.join(argv) if argv else
                  f"bench/{spec.NAME}.py {name} (in process)",
                  wall_s=wall, machine=machine_record(),
                  finished=datetime.datetime.now().isoformat(timespec="seconds"))
    write_json_atomic(cell_path(args, name), result)
    if args.commit:
      figures = [os.path.join(os.path.dirname(args.doc), f) for f in result.get("figures", [])]
      commit([cell_path(args, name)] + figures, f"{spec.NAME}: cell {name} ({wall:.0f} s)")
  log(spec, f"  {name} ok in {time.time() - t0:.1f} s")
  return "ran"


def load_cells(spec, args) -> dict:
  return {name: c for name in spec.CELLS if (c := _read(cell_path(args, name))) is not None}


def parse_args(spec, argv=None, *, runs: str, out: str, doc: str, description: str):
  p = argparse.ArgumentParser(description=description)
  p.add_argument("--cells", default="all", help=f"comma-separated of {', '.join(spec.CELLS)}")
  p.add_argument("--data-dir", default=os.path.join("..", "shared", "data"))
  p.add_argument("--runs", default=runs)
  p.add_argument("--out", default=out)
  p.add_argument("--doc", default=doc)
  p.add_argument("--deadline", type=float, default=0.0,
                 help="seconds from now: a running cell gets SIGTERM then (it resumes next "
                      "time) and no further cell starts; 0 = none")
  p.add_argument("--aggregate-only", action="store_true")
  p.add_argument("--dry-run", action="store_true")
  p.add_argument("--commit", action="store_true")
  args = p.parse_args(argv)
  args.cells = list(spec.CELLS) if args.cells == "all" else [c for c in args.cells.split(",") if c]
  bad = [c for c in args.cells if c not in spec.CELLS]
  if bad:
    p.error(f"unknown cell(s) {bad}; use {', '.join(spec.CELLS)}")
  return args


def main(spec, args) -> None:
  """Runs the asked cells (skipping recorded ones), then rebuilds the document."""
  os.chdir(ROOT)
  stop_at = time.time() + args.deadline if args.deadline else 0.0
  statuses = {}
  if args.dry_run:
    for name in args.cells:
      if spec.CELLS[name].subprocess:
        print(f"# {name}\n{shlex.join(spec.command(args, name))}")
    return
  if not args.aggregate_only:
    for name in args.cells:
      if os.path.isfile(cell_path(args, name)):
        continue
      if stop_at and time.time() >= stop_at:
        statuses[name] = "late"
        continue
      statuses[name] = spec.execute(args, name, stop_at)
  write_atomic(args.doc, spec.render(args, load_cells(spec, args)))
  if args.commit and not args.aggregate_only:
    commit([args.doc], f"{spec.NAME}: document regenerated from the cells")
  print(json.dumps({"statuses": statuses, "cells": len(load_cells(spec, args))}))
