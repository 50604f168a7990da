"""bench/synthesis_recipes.py: cell naming, skip-if-done, dependency rebuilds, commands, the
paired comparison and the document, on hand-made cell files (no run is started)."""

from __future__ import annotations

import json
import math
import os
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

from bench import synthesis_recipes as driver  # noqa: E402


def _args(tmp_path, *extra):
  return driver.parse_args(["--runs", str(tmp_path / "runs"), "--cells", str(tmp_path / "cells"),
                            "--out", str(tmp_path / "doc.md"), "--notes", str(tmp_path / "n.md"),
                            "--figures", str(tmp_path / "fig"), *extra])


def _cell(args, dataset, row, seed, per_class, **metrics):
  cell = {"set": dataset, "row": row, "seed": seed, "kind": driver.ROWS[row].kind,
          "class_names": ["rare", "common", "mid"], "train_counts": [10, 100, 30],
          "metrics": {"per_class_accuracy": per_class, **metrics}, "wall_s": 60.0,
          "command": f"python -m jaxsynth.main {row} {seed}"}
  driver.write_json_atomic(driver.cell_path(args.cells, dataset, row, seed), cell)
  return cell


def _finish_run(args, dataset, row, seed):
  workdir = driver.run_dir(args.runs, dataset, row, seed)
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "metrics.json"), "w") as f:
    json.dump({}, f)


def test_cells_are_named_by_set_row_and_seed(tmp_path):
  args = _args(tmp_path)
  assert driver.cell_path("c", "breastmnist", "augment", 2) == os.path.join(
      "c", "breastmnist", "augment", "seed2.json")
  assert driver.run_dir("r", "breastmnist", "ce", 0) == os.path.join("r", "breastmnist", "ce",
                                                                     "seed0")
  cells = driver.planned_cells(args)
  assert len(cells) == len(set(cells))
  # generators have one seed, are planned on their sets only; seed-major order
  assert [c for c in cells if c[1] == "generator_dit"] == [("breastmnist", "generator_dit", 0)]
  assert ("chula_rbc11", "equal_scale", 2) in cells
  assert ("retinamnist", "equal_scale", 0) not in cells
  assert ("ham10000", "augment", 0) not in cells and ("ham10000", "iois_ois_aas", 1) in cells
  assert [s for _, _, s in cells] == sorted(s for _, _, s in cells)
  # the ablation rows run seed 0 only outside BreastMNIST (the budget cut)
  assert ("retinamnist", "iois_ois", 0) in cells and ("retinamnist", "iois_ois", 1) not in cells
  assert ("breastmnist", "pretrain_finetune", 2) in cells
  assert ("chula_rbc11", "diffupt_classifier", 2) in cells
  ratios = [c for c in cells if c[1].startswith("diffupt_ratio_")]
  assert {c[0] for c in ratios} == {"breastmnist"} and len(ratios) == 4 * 3


def test_finished_cells_are_skipped_and_missing_run_dirs_are_rebuilt_first(tmp_path):
  args = _args(tmp_path, "--sets", "breastmnist", "--rows", "ce,augment", "--seeds", "0,1")
  units = driver.work_units(args, driver.planned_cells(args))
  # the generator (seed 0) and ce of the seed come before each augment cell
  assert units.index(("breastmnist", "generator_unet", 0)) < units.index(
      ("breastmnist", "augment", 0))
  assert units.index(("breastmnist", "ce", 1)) < units.index(("breastmnist", "augment", 1))
  _cell(args, "breastmnist", "ce", 0, [0.5, 0.9, 0.7])
  _cell(args, "breastmnist", "augment", 1, [0.5, 0.9, 0.7])
  units = driver.work_units(args, driver.planned_cells(args))
  # ce seed 0 is done, but augment seed 0 reads its run directory, which this machine lacks
  assert ("breastmnist", "ce", 0) in units and ("breastmnist", "augment", 1) not in units
  _finish_run(args, "breastmnist", "ce", 0)
  _finish_run(args, "breastmnist", "generator_unet", 0)
  units = driver.work_units(args, driver.planned_cells(args))
  assert units == [("breastmnist", "augment", 0), ("breastmnist", "ce", 1)]


def test_commands_share_the_generator_and_the_ce_baseline(tmp_path):
  args = _args(tmp_path)
  gen = driver.run_dir(args.runs, "retinamnist", "generator_unet", 0)
  aug = driver.build_command(args, "retinamnist", "augment_filter", 2)
  assert f"--config.recipe.generator_workdir={gen}" in aug
  assert "--config.generator.seed=0" in aug and "--config.seed=2" in aug
  ce = driver.run_dir(args.runs, "retinamnist", "ce", 2)
  assert f"--config.recipe.baseline_workdir={ce}" in aug
  assert f"--config.generator.sample.filter.classifier={ce}" in aug
  # the generator's own run has the same model and training keys, at the top level
  own = driver.build_command(args, "retinamnist", "generator_unet", 0)
  under = [a.replace("--config.generator.", "--config.") for a in aug
           if a.startswith(("--config.generator.model", "--config.generator.train"))]
  assert under and all(a in own for a in under)
  online = driver.build_command(args, "retinamnist", "iois_ois", 1)
  assert "--config.generator.sample.cfg_scale=0.0" in online
  assert not any(a == "--config.generator.sample.cfg_scale=2.0" for a in online)
  offline = driver.run_dir(args.runs, "retinamnist", "iois_offline", 1)
  assert f"--config.recipe.baseline_workdir={os.path.join(offline, 'baseline')}" in online
  crt = driver.build_command(args, "chula_rbc11", "best_classic", 0)
  assert "configs/recipes.py:crt,npz" in crt
  assert ("chula_rbc11", "ce", 0) in driver.dependencies("chula_rbc11", "best_classic", 0)


def test_ldm_rows_run_the_autoencoder_then_the_ldm_and_reuse_both(tmp_path):
  args = _args(tmp_path, "--sets", "breastmnist", "--rows", "augment_ldm,diffupt_ldm_classifier",
               "--seeds", "0")
  units = driver.work_units(args, driver.planned_cells(args))
  rows = [u[1] for u in units]
  assert rows.index("autoencoder_kl") < rows.index("generator_ldm") < rows.index("augment_ldm")
  ae = driver.run_dir(args.runs, "breastmnist", "autoencoder_kl", 0)
  assert driver.build_command(args, "breastmnist", "autoencoder_kl", 0)[4] == \
      "configs/autoencoder.py:kl"
  own = driver.build_command(args, "breastmnist", "generator_ldm", 0)
  assert f"--config.latent.autoencoder_run={ae}" in own and "configs/diffusion.py:ldm" in own
  for row in ("augment_ldm", "diffupt_ldm_classifier"):
    cmd = driver.build_command(args, "breastmnist", row, 0)
    assert f"--config.generator.latent.autoencoder_run={ae}" in cmd
    gen = driver.run_dir(args.runs, "breastmnist", "generator_ldm", 0)
    assert f"--config.recipe.generator_workdir={gen}" in cmd
    under = [a.replace("--config.generator.", "--config.") for a in cmd
             if a.startswith(("--config.generator.model", "--config.generator.train",
                              "--config.generator.diffusion"))]
    assert under and all(a in own for a in under)
  assert "--config.recipe.filter=classifier" in cmd and "--config.recipe.pretrain_lr=0.001" in cmd


def test_paired_comparison_and_noise(tmp_path):
  args = _args(tmp_path)
  for s, (a, b) in enumerate([(0.70, 0.60), (0.72, 0.61), (0.71, 0.62)]):
    _cell(args, "breastmnist", "augment", s, [0.5, 0.9, 0.7], macro_f1=a)
    _cell(args, "breastmnist", "ce", s, [0.4, 0.9, 0.7], macro_f1=b)
  cells = driver.load_cells(args.cells)
  p = driver.paired(cells, "breastmnist", "augment", "ce", "macro_f1")
  assert p["n"] == 3 and p["mean"] == pytest.approx(0.10)
  assert p["std"] == pytest.approx(np.std([0.10, 0.11, 0.09], ddof=1))
  assert p["beyond_noise"]   # 0.10 against seed stds of about 0.01
  rare = driver.paired(cells, "breastmnist", "augment", "ce", "class0_accuracy")
  assert rare["mean"] == pytest.approx(0.1) and rare["std"] == pytest.approx(0.0, abs=1e-12)
  # a difference inside the seed-to-seed spread is not flagged
  for s, (a, b) in enumerate([(0.60, 0.50), (0.70, 0.72), (0.80, 0.85)]):
    _cell(args, "retinamnist", "augment", s, [0.5, 0.9, 0.7], macro_f1=a)
    _cell(args, "retinamnist", "ce", s, [0.4, 0.9, 0.7], macro_f1=b)
  q = driver.paired(driver.load_cells(args.cells), "retinamnist", "augment", "ce", "macro_f1")
  assert not q["beyond_noise"] and math.isclose(q["mean"], (0.1 - 0.02 - 0.05) / 3)
  assert driver.paired(cells, "breastmnist", "augment", "best_classic", "macro_f1") is None


def test_document_is_regenerated_from_the_cells_alone(tmp_path):
  args = _args(tmp_path, "--sets", "breastmnist,retinamnist")
  with open(args.notes, "w") as f:
    f.write("### Verdict\n\nhand-written notes")
  for s in range(2):
    _cell(args, "breastmnist", "ce", s, [0.4, 0.9, 0.7], macro_f1=0.6 + s / 100, auc=0.8)
    _cell(args, "breastmnist", "augment", s, [0.6, 0.8, 0.7], macro_f1=0.65, auc=0.82)
  refused = {"set": "breastmnist", "row": "augment_filter", "seed": 0, "kind": "synthesis",
             "error": "the filter kept none of the samples"}
  driver.write_json_atomic(driver.cell_path(args.cells, "breastmnist", "augment_filter", 0),
                           refused)
  gen = {"set": "breastmnist", "row": "generator_unet", "seed": 0, "kind": "generator",
         "command": "python -m jaxsynth.main gen", "wall_s": 600.0,
         "generator": {"steps": 3000, "train_s": 1200.0, "train_loss": 0.03, "val_loss": 0.04}}
  driver.write_json_atomic(driver.cell_path(args.cells, "breastmnist", "generator_unet", 0), gen)
  driver.main(["--aggregate-only", "--runs", args.runs, "--cells", args.cells, "--out",
               args.out, "--notes", args.notes, "--figures", args.figures,
               "--sets", "breastmnist,retinamnist"])
  doc = open(args.out).read()
  assert "hand-written notes" in doc
  assert "| ce | 0.605 ± 0.007 |" in doc
  assert "| augment | 0.650 ± 0.000 |" in doc
  assert "| generator_unet | 3000 | 20 min | 0.0300/0.0400 | — |" in doc
  assert "- augment_filter seed 0: the filter kept none of the samples" in doc
  assert "| augment | +0.045 ± 0.007 ** |" in doc   # paired macro-F1 against ce, beyond noise
  assert "acc rare" in doc and "acc mid" in doc      # the two rarest classes by train count
  assert "## retinamnist\n\nNo finished cells yet." in doc
  assert os.path.isfile(os.path.join(args.figures, "breastmnist_accuracy_change.png"))
  assert "python -m jaxsynth.main augment 1" in doc
  # A call on one set rebuilds the whole study's document, not that set's part only.
  driver.main(["--aggregate-only", "--runs", args.runs, "--cells", args.cells, "--out",
               args.out, "--notes", args.notes, "--figures", args.figures,
               "--sets", "retinamnist"])
  assert "| ce | 0.605 ± 0.007 |" in open(args.out).read()


def test_a_refused_run_is_read_from_its_one_line_error(tmp_path):
  log_path = tmp_path / "seed0.log"
  log_path.write_text("I1207 info line\njaxsynth: augment: running stage sample\n"
                      "jaxsynth: error: the filter kept none of the samples: loosen it\n")
  assert driver.run_error(str(log_path)) == "the filter kept none of the samples: loosen it"
  assert driver.run_error(str(tmp_path / "absent.log")) == ""
  # a broken file of the run's own is a failure to rerun, never a recorded result
  log_path.write_text("jaxsynth: error: shard /r/sample/samples/shard-00005.npz is damaged and "
                      "cannot be read (AST constructor recursion depth mismatch); rerun\n")
  assert driver.run_error(str(log_path)) == ""
