"""bench/autoencoder_study.py: commands, input rebuilds on a fresh machine, skip-if-done and the
document, on hand-made cell files (no run is started)."""

from __future__ import annotations

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

from bench import autoencoder_study as driver  # noqa: E402
from bench.synthesis_recipes import write_json_atomic  # noqa: E402


def _args(tmp_path, *extra):
  return driver.parse_args(["--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "cells"),
                            "--doc", str(tmp_path / "doc.md"), *extra])


def test_ldm_and_pixel_share_the_denoiser_and_attend_at_the_same_level(tmp_path):
  args = _args(tmp_path)
  ldm, pixel = driver.command(args, "ldm"), driver.command(args, "pixel")
  assert f"--config.latent.autoencoder_run={driver.run_dir(args, 'ae_kl_breastmnist_64')}" in ldm
  shared = [a for a in ldm if "attn_resolutions" not in a and "latent" not in a
            and "workdir" not in a and "configs/" not in a and "runs" not in a]
  assert all(a in pixel for a in shared)
  # latent 16 px -> levels 16, 8, 4; pixel 64 px -> 64, 32, 16: both at the lowest level
  assert "--config.model.unet.attn_resolutions=(4,)" in ldm
  assert "--config.model.unet.attn_resolutions=(16,)" in pixel
  speed = driver.command(args, "speed_128")
  assert speed[speed.index("--image-size") + 1] == "128" and "--latent" in speed
  assert speed[speed.index("--attn-res") + 1] == "8"     # latent 32 px: its lowest level
  assert "busi_128.npz" in " ".join(driver.command(args, "ae_vq_busi_128"))


def test_missing_inputs_are_rerun_first_and_only_the_asked_cell_is_recorded(tmp_path,
                                                                           monkeypatch):
  args = _args(tmp_path)
  calls = []
  monkeypatch.setattr(driver, "run_only",
                      lambda a, name, stop_at, record=False: calls.append((name, record)) or "ran")
  # a fresh machine: the autoencoder's cell is committed, its run directory is not
  write_json_atomic(driver.cell_path(args, "ae_kl_breastmnist_64"), {"wall_s": 1})
  assert driver.execute(args, "sample_ldm", 0.0) == "ran"
  assert calls == [("ae_kl_breastmnist_64", False), ("ldm", True), ("sample_ldm", True)]
  # a failed input stops the cell that needs it
  calls.clear()
  monkeypatch.setattr(driver, "run_only",
                      lambda a, name, stop_at, record=False: calls.append(name) or "failed")
  assert driver.execute(args, "sample_pixel", 0.0) == "failed" and calls == ["pixel"]


def test_document_shows_the_cells_and_names_what_is_not_run(tmp_path):
  args = _args(tmp_path)
  write_json_atomic(driver.cell_path(args, "ae_kl_breastmnist_64"), {
      "metrics": {"steps": 4000, "val": {"psnr": 31.25, "ssim": 0.871, "l1": 0.0312,
                                         "per_class": {"psnr": [30.5, 31.5],
                                                       "ssim": [0.86, 0.875]}}},
      "wall_s": 900.0, "command": "python -m jaxsynth.main ae", "machine": {"cpu": "X"}})
  write_json_atomic(driver.cell_path(args, "speed_64"), {
      "latent": {"image_shape": [64, 64, 1], "latent_shape": [16, 16, 4],
                 "decode_s_median": 0.25, "images_per_s_end_to_end": 4.0,
                 "pixel": {"images_per_s": 0.5}, "latent_over_pixel_images_per_s": 8.0},
      "wall_s": 100.0, "command": "python bench/sampler.py --latent", "machine": {"cpu": "X"}})
  write_json_atomic(driver.cell_path(args, "kid"), {
      "metrics": {k: {"kid_mean": v, "per_class.benign.kid_mean": v / 2, "fid": 10.0,
                      "precision": 0.5, "recall": 0.4}
                  for k, v in (("real_test", 0.001), ("ldm", 0.02), ("pixel", 0.03))},
      "wall_s": 10.0, "command": "kid", "machine": {"cpu": "X"}})
  driver.main(["--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "cells"),
               "--doc", str(tmp_path / "doc.md"), "--aggregate-only"])
  doc = open(tmp_path / "doc.md").read()
  assert "| kl | breastmnist_64 | 31.25 | 0.871 | 0.0312 | 30.50 / 31.50 | 0.860 / 0.875 |" in doc
  assert "| vq | busi_128 | not run yet |" in doc
  assert "| 64 | 16x16x4 | 0.250 | 4.000 | 0.500 | 8.00 | - |" in doc
  assert "| ldm | 0.0200 | benign 0.0100 |" in doc
  assert "- `pixel`: not run yet" in doc
