"""bench/gan_study.py: commands, input rebuilds, skip-if-done and the document, on hand-made cell
files (no run is started)."""

from __future__ import annotations

import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

from bench import gan_study as driver  # noqa: E402
from bench.synthesis_recipes import write_json_atomic  # noqa: E402


def _args(tmp_path, *extra):
  data = tmp_path / "data"
  data.mkdir(exist_ok=True)
  for name, classes in (("retinamnist", 5), ("chula_rbc11", 11)):
    np.savez(data / f"{name}.npz", class_names=np.array([f"c{i}" for i in range(classes)]),
             train_labels=np.repeat(np.arange(classes), np.arange(classes) + 1))
  return driver.parse_args(["--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "cells"),
                            "--doc", str(tmp_path / "doc.md"), "--data-dir", str(data), *extra])


def test_gan_cells_share_sizes_and_sweeps_are_balanced(tmp_path):
  args = _args(tmp_path)
  bagan_gp = driver.command(args, "bagan_gp_chula_rbc11")
  assert "configs/bagan_gp.py:bagan_gp" in bagan_gp
  assert "--config.model.channels=(32, 64, 128)" in bagan_gp
  for gan in ("bagan", "cdragan"):
    other = driver.command(args, f"{gan}_chula_rbc11")
    same = [a for a in bagan_gp if a.startswith("--config.") and "channels" in a or "epochs" in a]
    assert all(a in other for a in same) and f"configs/bagan_gp.py:{gan}" in other
  assert "--config.data.image_size=28" in driver.command(args, "bagan_retinamnist")
  sweep = driver.command(args, "sample_bagan_retinamnist")
  assert "--config.sample.class_counts=(200, 200, 200, 200, 200)" in sweep
  assert f"--config.sample.run_dir={driver.run_dir(args, 'bagan_retinamnist')}" in sweep
  diffusion = driver.command(args, "sample_diffusion_chula_rbc11")
  assert "--config.sample.run_dir=" + driver.diffusion_run("chula_rbc11") in diffusion
  assert "--config.sample.num_steps=50" in diffusion and len(
      [a for a in diffusion if a.startswith("--config.sample.class_counts")]) == 1


def test_missing_inputs_are_rerun_first(tmp_path, monkeypatch):
  args = _args(tmp_path)
  calls = []
  monkeypatch.setattr(driver, "run_only",
                      lambda a, name, stop_at, record=False: calls.append((name, record)) or "ran")
  write_json_atomic(driver.cell_path(args, "bagan_retinamnist"), {"wall_s": 1})
  assert driver.execute(args, "sample_bagan_retinamnist", 0.0) == "ran"
  assert calls == [("bagan_retinamnist", False), ("sample_bagan_retinamnist", True)]


def test_a_missing_diffusion_generator_skips_its_sweep(tmp_path):
  args = _args(tmp_path)
  assert driver.run_only(args, "sample_diffusion_retinamnist", 0.0, record=True) == "failed"
  assert not os.path.exists(driver.cell_path(args, "sample_diffusion_retinamnist"))


def test_document_orders_minority_classes_first(tmp_path):
  args = _args(tmp_path)
  names = [f"c{i}" for i in range(5)]
  counts = [50, 5, 20, 10, 40]
  report = {"fid": 12.0, "kid_mean": 0.004}
  for c, name in enumerate(names):
    report[f"per_class.{name}.fid"] = 10.0 + c
    report[f"per_class.{name}.kid_mean"] = 0.001 * (c + 1)
  write_json_atomic(driver.cell_path(args, "metrics_retinamnist"), {
      "metrics": {"bagan_gp": report, "real_train": report}, "class_names": names,
      "train_counts": counts, "wall_s": 5.0, "command": "in process", "machine": {"cpu": "X"}})
  driver.main(["--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "cells"),
               "--doc", str(tmp_path / "doc.md"), "--data-dir", args.data_dir,
               "--aggregate-only"])
  doc = open(tmp_path / "doc.md").read()
  assert "| generator | all | c1 (n=5) | c3 (n=10) | c2 (n=20) | c4 (n=40) | c0 (n=50) |" in doc
  assert "| BAGAN-GP | 12.0 | 11.0 | 13.0 | 12.0 | 14.0 | 10.0 |" in doc
  assert "| BAGAN-GP | 4.00 | 2.00 | 4.00 | 3.00 | 5.00 | 1.00 |" in doc
  assert "| BAGAN | not run |" in doc
  assert "## chula_rbc11" in doc and "Not measured yet" in doc
  assert "- `bagan_gp_retinamnist`: not run yet" in doc
