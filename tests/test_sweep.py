"""Task sample (sampling sweeps): budgets, shards + manifest read by the synthetic source,
resume after a stop writes byte-identical shards, and sample i is independent of the batch."""

import json
import os

import ml_collections
import numpy as np
import pytest

from jaxsynth.data import synthetic_format
from jaxsynth.data.sources import open_source
from jaxsynth.errors import ConfigError
from jaxsynth.synthesis import sweep
from jaxsynth.tasks.diffusion import train_diffusion
from jaxsynth.tasks import sample as sample_task
from jaxsynth.tasks.sample import sample
from jaxsynth.training.loop import Preempted, StopRequest
from tests.helpers import tiny_diffusion_config

# The digits train split (60%) per class; balance tops each class up to sample.per_class.
DIGITS_TRAIN_COUNTS = [106, 110, 107, 109, 109, 110, 109, 107, 104, 108]
BALANCE = [111 - n for n in DIGITS_TRAIN_COUNTS]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("trained"))
  train_diffusion(tiny_diffusion_config("dit", steps=2, train__sample_every=0,
                                        diffusion__val_batches=0), workdir)
  return workdir


def sweep_config(run_dir, **sample):
  config = tiny_diffusion_config("dit")
  config.task = "sample"
  config.sample.run_dir = run_dir
  config.sample.per_class = 111
  config.sample.update(sample)
  return config


def shard_files(workdir):
  directory = os.path.join(workdir, "samples")
  return sorted(f for f in os.listdir(directory) if f.startswith("shard-"))


def read_bytes(workdir, name):
  with open(os.path.join(workdir, "samples", name), "rb") as f:
    return f.read()


@pytest.fixture(scope="module")
def full_sweep(trained, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("sweep"))
  metrics = sample(sweep_config(trained), workdir)
  return workdir, metrics


def test_sweep_writes_shards_and_manifest_for_the_synthetic_source(full_sweep):
  workdir, metrics = full_sweep
  assert metrics["counts"] == BALANCE and metrics["samples"] == sum(BALANCE) == 31
  assert shard_files(workdir) == [f"shard-{k:05d}.npz" for k in range(6)]  # 5 x 6, 1
  manifest = synthetic_format.read_manifest(os.path.join(workdir, "samples"))
  assert manifest["complete"] and manifest["counts"] == BALANCE
  assert manifest["checkpoint"] == {"which": "latest", "step": 2}
  assert [s["count"] for s in manifest["shards"]] == [6, 6, 6, 6, 6, 1]
  index = []
  for name in shard_files(workdir):
    with np.load(os.path.join(workdir, "samples", name), allow_pickle=False) as shard:
      assert shard["images"].dtype == np.uint8 and shard["images"].shape[1:] == (8, 8, 1)
      assert shard["labels"].dtype == np.int64 and shard["index"].dtype == np.int64
      index.append(shard["index"])
  np.testing.assert_array_equal(np.concatenate(index), np.arange(31))
  data = ml_collections.ConfigDict({"source": "synthetic", "path": workdir, "val_fraction": 0.0,
                                    "test_fraction": 0.0})
  source = open_source(data, "train")
  assert len(source) == 31 and source.class_counts().tolist() == BALANCE
  assert source[0]["image"].shape == (8, 8, 1)
  assert os.path.exists(os.path.join(workdir, "metrics.json"))


def test_interrupted_sweep_resumes_byte_identically(trained, full_sweep, tmp_path):
  full_dir, _ = full_sweep
  workdir = str(tmp_path / "resumed")
  config = sweep_config(trained)
  with pytest.raises(Preempted):
    sample(config, workdir, stop=StopRequest(at_step=2))
  first = shard_files(workdir)
  assert first == ["shard-00000.npz", "shard-00001.npz"]
  listed = synthetic_format.read_manifest(os.path.join(workdir, "samples"))["shards"]
  assert [s["file"] for s in listed] == first
  stamps = {f: os.stat(os.path.join(workdir, "samples", f)).st_mtime_ns for f in first}
  sample(config, workdir)
  assert shard_files(workdir) == shard_files(full_dir)
  for name in shard_files(full_dir):
    assert read_bytes(workdir, name) == read_bytes(full_dir, name), name
  for name, stamp in stamps.items():   # finished shards are never rewritten
    assert os.stat(os.path.join(workdir, "samples", name)).st_mtime_ns == stamp


def test_sample_i_does_not_depend_on_the_batch_size(trained, full_sweep, tmp_path):
  full_dir, _ = full_sweep   # batch 4
  workdir = str(tmp_path / "batch8")
  sample(sweep_config(trained, batch_size=8), workdir)
  for name in shard_files(full_dir):
    a = np.load(os.path.join(full_dir, "samples", name))["images"].astype(int)
    b = np.load(os.path.join(workdir, "samples", name))["images"].astype(int)
    # Equal up to float rounding of differently-sized batches, seen after uint8 quantisation.
    assert np.abs(a - b).max() <= 1 and np.mean(a == b) > 0.99


def test_sweep_can_sample_in_bfloat16_from_a_float32_run(trained, full_sweep, tmp_path,
                                                         monkeypatch):
  full_dir, _ = full_sweep   # the trained run's float32
  assert synthetic_format.read_manifest(os.path.join(full_dir, "samples"))["compute_dtype"] == (
      "float32")
  built = []
  make = sample_task.make_denoiser
  monkeypatch.setattr(sample_task, "make_denoiser",
                      lambda cfg, n: built.append(cfg.dtype) or make(cfg, n))
  workdir = str(tmp_path / "bf16")
  sample(sweep_config(trained, dtype="bfloat16"), workdir)
  assert built == ["bfloat16"]
  assert synthetic_format.read_manifest(os.path.join(workdir, "samples"))["compute_dtype"] == (
      "bfloat16")
  assert shard_files(workdir) == shard_files(full_dir)
  # Sample i starts from the same noise with the same label; bf16 compute may move pixels a
  # little (this 2-step model's samples saturate, so here they stay equal).
  ours = np.concatenate([np.load(os.path.join(workdir, "samples", f))["images"]
                         for f in shard_files(workdir)]).astype(int)
  theirs = np.concatenate([np.load(os.path.join(full_dir, "samples", f))["images"]
                           for f in shard_files(full_dir)]).astype(int)
  assert np.abs(ours - theirs).mean() < 4
  with pytest.raises(ConfigError, match="sample.dtype"):
    sample(sweep_config(trained, dtype="float16"), str(tmp_path / "bad"))


def test_budgets_give_the_asked_counts():
  cfg = ml_collections.ConfigDict({"budget": "counts", "class_counts": (5, 0, 2), "per_class": 0,
                                   "total": 0, "ratio": ()})
  assert sweep.class_budget(cfg, 3).tolist() == [5, 0, 2]
  cfg.budget = "balance"
  assert sweep.class_budget(cfg, 3, [10, 4, 7]).tolist() == [0, 6, 3]
  cfg.per_class = 12
  assert sweep.class_budget(cfg, 3, [10, 4, 13]).tolist() == [2, 8, 0]
  cfg.budget, cfg.total, cfg.ratio = "ratio", 10, (0.3, 0.7, 0.0)
  assert sweep.class_budget(cfg, 3).tolist() == [3, 7, 0]
  cfg.total, cfg.ratio = 100, (1, 1, 1)
  assert sweep.class_budget(cfg, 3).tolist() == [34, 33, 33]
  cfg.ratio = (1, 1)
  with pytest.raises(ConfigError, match="sample.ratio"):
    sweep.class_budget(cfg, 3)
  cfg.budget, cfg.class_counts = "counts", (0, 0, 0)
  with pytest.raises(ConfigError, match="no samples"):
    sweep.class_budget(cfg, 3)


def test_label_order_interleaves_classes_and_keeps_the_counts():
  labels = sweep.label_order([30, 70])
  assert np.bincount(labels).tolist() == [30, 70]
  assert np.bincount(labels[:10], minlength=2).tolist() == [3, 7]   # any prefix ~ in budget
  np.testing.assert_array_equal(sweep.label_order([30, 70]), labels)  # deterministic
  assert sweep.label_order([2, 0, 1]).tolist() == [0, 2, 0]


def test_sweep_of_a_missing_run_is_a_clear_error(tmp_path):
  with pytest.raises(Exception, match="train_diffusion"):
    sample(sweep_config(str(tmp_path / "nowhere")), str(tmp_path / "out"))
  with pytest.raises(ConfigError, match="sample.run_dir"):
    sample(sweep_config(""), str(tmp_path / "out"))
