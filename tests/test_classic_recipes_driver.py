"""bench/classic_recipes.py: job order, stage-1 reuse, per-dataset epochs and the deadline."""

from __future__ import annotations

import json
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

from bench import classic_recipes as driver  # noqa: E402

BINARY = {"num_classes": 2}
FIVE = {"num_classes": 5}


def _args(tmp_path, *extra):
  return driver.parse_args(["--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "t.md"),
                            *extra])


def test_jobs_are_seed_major_with_ce_then_decoupled_first(tmp_path):
  args = _args(tmp_path, "--datasets", "a,b", "--recipes", "focal,crt,ce,bce", "--seeds", "0,1")
  jobs = driver.plan_jobs(args, {"a": BINARY, "b": FIVE})
  assert [j[2] for j in jobs] == [0] * 7 + [1] * 7  # bce only on the two-class set
  seed0 = [(d, r) for d, r, s in jobs if s == 0]
  assert seed0[:2] == [("a", "ce"), ("b", "ce")]
  assert seed0[2:4] == [("a", "crt"), ("b", "crt")]
  assert ("b", "bce") not in seed0 and ("a", "bce") in seed0


def test_decoupled_command_names_the_ce_run_as_stage1(tmp_path):
  args = _args(tmp_path, "--datasets", "a", "--recipes", "ce,lws")
  cmd = driver.build_command(args, "a", "lws", 2)
  ce_workdir = driver.run_paths(args.runs, "a", "ce", 2)["workdir"]
  assert f"--config.recipe.stage1_workdir={ce_workdir}" in cmd
  assert not any("stage1_workdir" in c for c in driver.build_command(args, "a", "ce", 2))
  off = _args(tmp_path, "--datasets", "a", "--recipes", "ce,lws", "--no-reuse-stage1")
  assert not any("stage1_workdir" in c for c in driver.build_command(off, "a", "lws", 2))
  # Without a ce run in the sweep there is nothing to reuse.
  alone = _args(tmp_path, "--datasets", "a", "--recipes", "lws")
  assert driver.stage1_source(alone, "a", "lws", 0) is None


def test_dataset_epochs_set_the_schedule(tmp_path):
  args = _args(tmp_path, "--epochs", "100", "--dataset-epochs", "big=20")
  big = driver.schedule_overrides(args, "big")
  assert "--config.train.epochs=20" in big and "--config.train.decay_epochs=(10,15)" in big
  assert "--config.train.epochs=100" in driver.schedule_overrides(args, "small")


def _fake_finished(args, dataset, recipe, seed, test_metrics):
  workdir = driver.run_paths(args.runs, dataset, recipe, seed)["workdir"]
  os.makedirs(os.path.join(workdir, "checkpoints"), exist_ok=True)
  with open(os.path.join(workdir, "metrics.json"), "w") as f:
    json.dump({"test": test_metrics}, f)
  return workdir


def test_finished_runs_are_skipped_and_the_table_aggregates_them(tmp_path):
  data_dir = tmp_path / "data"
  data_dir.mkdir()
  labels = np.array([0] * 6 + [1] * 3)
  np.savez(data_dir / "toy.npz", train_labels=labels, train_images=np.zeros((9, 4, 4, 1), np.uint8),
           class_names=np.array(["no", "yes"]))
  args = _args(tmp_path, "--datasets", "toy", "--recipes", "ce", "--seeds", "0,1",
               "--data-dir", str(data_dir))
  for seed, f1 in ((0, 0.5), (1, 0.7)):
    _fake_finished(args, "toy", "ce", seed, {
        "macro_f1": f1, "balanced_accuracy": 0.6, "mcc": 0.1, "auc": 0.8, "accuracy": 0.7,
        "sensitivity": 0.5, "specificity": 0.9, "harmonic_mean": 0.64,
        "per_class_accuracy": [0.9, 0.5]})
  statuses = driver.run_all(args, {"toy": driver.dataset_info(str(data_dir / "toy.npz"))}, 0.0)
  assert {s["status"] for s in statuses.values()} == {"done_before"}
  result = driver.collect(args, "toy", "ce", driver.dataset_info(str(data_dir / "toy.npz")))
  assert result["seeds_done"] == [0, 1]
  assert np.isclose(result["metrics"]["macro_f1"]["mean"], 0.6)
  assert np.isclose(result["metrics"]["macro_f1"]["std"], np.std([0.5, 0.7], ddof=1))
  assert result["metrics"]["class1_accuracy"]["cell"] == "0.500 ± 0.000"


def test_prune_keeps_everything_but_checkpoints(tmp_path):
  args = _args(tmp_path)
  workdir = _fake_finished(args, "a", "focal", 0, {})
  os.makedirs(os.path.join(workdir, "stage2", "checkpoints", "best"))
  driver.prune_checkpoints(workdir)
  left = sorted(os.path.relpath(os.path.join(r, n), workdir)
                for r, ds, fs in os.walk(workdir) for n in ds + fs)
  assert left == ["metrics.json", "stage2"]


def test_a_decoupled_run_whose_stage1_failed_is_reported_not_run(tmp_path, monkeypatch):
  args = _args(tmp_path, "--datasets", "a", "--recipes", "ce,crt", "--seeds", "0")
  calls = []

  def fake_execute(args, dataset, recipe, seed, stop=None):
    calls.append(recipe)
    return {"status": "failed", "rc": 1, "wall_s": 1.0, "command": ""}

  monkeypatch.setattr(driver, "execute", fake_execute)
  statuses = driver.run_all(args, {"a": FIVE}, 0.0)
  assert calls == ["ce"]
  assert statuses["a/crt/seed0"]["status"] == "failed"
  assert "stage 1" in statuses["a/crt/seed0"]["reason"]


def test_deadline_starts_no_run_expected_to_overrun(tmp_path, monkeypatch):
  args = _args(tmp_path, "--datasets", "a", "--recipes", "ce,focal,cb_focal", "--seeds", "0",
               "--deadline", "100")
  clock = {"t": 0.0}
  monkeypatch.setattr(driver.time, "time", lambda: clock["t"])

  def fake_execute(args, dataset, recipe, seed, stop=None):
    clock["t"] += 60.0  # each run takes 60 s: the second would end at 120 > 100
    return {"status": "ran", "rc": 0, "wall_s": 60.0, "command": ""}

  monkeypatch.setattr(driver, "execute", fake_execute)
  statuses = driver.run_all(args, {"a": FIVE}, 0.0)
  assert [k for k, s in statuses.items() if s["status"] == "ran"] == ["a/ce/seed0"]
  assert sorted(k for k, s in statuses.items() if s["status"] == "not_started") == [
      "a/cb_focal/seed0", "a/focal/seed0"]
