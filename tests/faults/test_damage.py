"""Torn and corrupt files: a damaged checkpoint falls back to the previous good one, damaged
shards and manifests are drawn again and never read as data, stale temporaries are removed."""

import hashlib
import json
import logging
import os
import shutil

import ml_collections
import numpy as np
import pytest

from jaxsynth.data.sources import open_source
from jaxsynth.errors import CheckpointError, DataError
from jaxsynth.tasks import classifier
from jaxsynth.training.checkpoint import CHECKSUMS
from jaxsynth.training.loop import Preempted, StopRequest
from tests.faults import harness
from tests.faults.conftest import tiny_classifier_config
from tests.helpers import assert_trees_equal, checkpoint_steps, load_params


config = tiny_classifier_config


@pytest.fixture(scope="module")
def stopped(tmp_path_factory):
  """A run stopped after step 6 (checkpoints 2, 4, 6); tests damage copies of it."""
  workdir = str(tmp_path_factory.mktemp("stopped"))
  with pytest.raises(Preempted):
    classifier.train_and_evaluate(config(), workdir, stop=StopRequest(at_step=6))
  return workdir


def copy_of(stopped, tmp_path):
  workdir = str(tmp_path / "run")
  shutil.copytree(stopped, workdir)
  return workdir


def largest_file(directory):
  paths = [os.path.join(p, n) for p, _, names in os.walk(directory) for n in names
           if n != CHECKSUMS]
  return max(paths, key=os.path.getsize)


def damage(path, how):
  """Truncates a file to half, flips one bit in its middle, or removes it."""
  if how == "missing":
    os.remove(path)
    return
  with open(path, "r+b") as f:
    data = bytearray(f.read())
    if how == "truncated":
      f.truncate(len(data) // 2)
    else:
      data[len(data) // 2] ^= 0x10
      f.seek(0)
      f.write(bytes(data))


def tree_hash(directory):
  digest = hashlib.sha256()
  for parent, dirs, names in sorted(os.walk(directory)):
    dirs.sort()
    for name in sorted(names):
      path = os.path.join(parent, name)
      digest.update(os.path.relpath(path, directory).encode())
      with open(path, "rb") as f:
        digest.update(f.read())
  return digest.hexdigest()


@pytest.mark.parametrize("how", ["truncated", "bitflip"])  # a missing file: the torn step
def test_damaged_latest_checkpoint_falls_back_to_the_previous_good_one(uninterrupted, stopped,
                                                                       tmp_path, caplog, how):
  workdir = copy_of(stopped, tmp_path)
  assert checkpoint_steps(workdir) == [2, 4, 6]
  damage(largest_file(os.path.join(workdir, "checkpoints", "latest", "6")), how)
  with caplog.at_level(logging.WARNING, logger="jaxsynth"):
    classifier.train_and_evaluate(config(), workdir)
  warned = " ".join(r.getMessage() for r in caplog.records)
  assert "checkpoints/latest/6 is damaged" in warned and "quarantine" in warned
  assert os.path.isdir(os.path.join(workdir, "checkpoints", "quarantine", "latest-6"))
  assert_trees_equal(load_params(workdir, 8), load_params(uninterrupted, 8))
  with open(os.path.join(workdir, "metrics.json")) as a, \
       open(os.path.join(uninterrupted, "metrics.json")) as b:
    assert json.load(a) == json.load(b)


def test_no_good_checkpoint_is_one_error_and_nothing_moves(stopped, tmp_path):
  workdir = copy_of(stopped, tmp_path)
  for step in checkpoint_steps(workdir):
    damage(largest_file(os.path.join(workdir, "checkpoints", "latest", str(step))), "bitflip")
  before = tree_hash(os.path.join(workdir, "checkpoints"))
  with pytest.raises(CheckpointError, match="no good checkpoint in .*latest.*--overwrite"):
    classifier.train_and_evaluate(config(), workdir)
  assert tree_hash(os.path.join(workdir, "checkpoints")) == before


def test_torn_step_without_checksums_is_skipped(uninterrupted, stopped, tmp_path):
  # What a kill in the middle of an old-style deletion leaves: a step directory missing files.
  workdir = copy_of(stopped, tmp_path)
  step_dir = os.path.join(workdir, "checkpoints", "latest", "6")
  os.remove(os.path.join(step_dir, CHECKSUMS))
  shutil.rmtree(os.path.join(step_dir, "state"))
  classifier.train_and_evaluate(config(), workdir)
  assert_trees_equal(load_params(workdir, 8), load_params(uninterrupted, 8))


def test_damaged_best_is_remade_from_an_earlier_latest(uninterrupted, stopped, tmp_path):
  workdir = copy_of(stopped, tmp_path)
  best = checkpoint_steps(workdir, "best")[-1]
  damage(largest_file(os.path.join(workdir, "checkpoints", "best", str(best))), "bitflip")
  classifier.train_and_evaluate(config(), workdir)
  assert_trees_equal(load_params(workdir, 8), load_params(uninterrupted, 8))
  assert_trees_equal(load_params(workdir, which="best"),
                     load_params(uninterrupted, which="best"))


def test_damaged_sweep_is_redrawn_byte_identically(references, inputs, tmp_path):
  reference_dir, reference = references["sample"]
  workdir = str(tmp_path / "sweep")
  shutil.copytree(reference_dir, workdir)
  samples = os.path.join(workdir, "samples")
  damage(os.path.join(samples, "shard-00001.npz"), "truncated")
  damage(os.path.join(samples, "shard-00002.npz"), "bitflip")
  with open(os.path.join(samples, "manifest.json"), "r+") as f:
    f.truncate(100)                                   # a torn manifest
  stale = os.path.join(samples, ".tmp-shard-00003.npz-abcd")
  with open(stale, "wb") as f:
    f.write(b"half a shard")
  # The damaged sweep is never read as data.
  data = ml_collections.ConfigDict({"source": "synthetic", "path": workdir})
  with pytest.raises(DataError, match="manifest.json"):
    open_source(data, "train")
  record = harness.run_once(harness.CASES["sample"].args(inputs), workdir)
  assert record.returncode == 0, record.stderr_tail
  assert "is damaged" in record.stderr_tail and "drawing it again" in record.stderr_tail
  assert harness.compare(reference, harness.sweep_outcome(workdir)) == []
  assert not os.path.exists(stale)
  assert sorted(os.listdir(os.path.join(samples, "quarantine"))) == ["shard-00001.npz",
                                                                     "shard-00002.npz"]


def test_reader_refuses_a_shard_that_does_not_match_its_checksum(references, tmp_path):
  workdir = str(tmp_path / "sweep")
  shutil.copytree(references["sample"][0], workdir)
  damage(os.path.join(workdir, "samples", "shard-00004.npz"), "bitflip")
  data = ml_collections.ConfigDict({"source": "synthetic", "path": workdir})
  with pytest.raises(DataError, match="shard-00004.npz is damaged.*sha256"):
    open_source(data, "train")
  np.testing.assert_array_equal(harness.sample_accounting(references["sample"][1], 60)["lost"], 0)


def test_step_killed_before_its_commit_is_committed_and_pruned_on_resume(tmp_path, monkeypatch):
  # Found by bench/faults.py: a kill between orbax's rename of the last step and its commit
  # left the older steps unpruned after the resumed run (same parameters, more checkpoints).
  from jaxsynth.training import checkpoint as checkpoint_lib
  state = {"w": np.arange(4.0, dtype=np.float32)}
  saver = checkpoint_lib.Checkpointer(str(tmp_path), keep=2)
  for step in (2, 4):
    saver.save(step, state, {"step": step})
  saver.wait()

  class Killed(Exception):
    pass

  def die(self, which, step):
    raise Killed
  monkeypatch.setattr(checkpoint_lib.Checkpointer, "_commit", die)
  saver.save(6, state, {"step": 6})
  with pytest.raises(Killed):
    saver.wait()
  monkeypatch.undo()
  assert checkpoint_steps(str(tmp_path)) == [2, 4, 6]
  assert not os.path.exists(tmp_path / "checkpoints" / "latest" / "6" / CHECKSUMS)
  resumed = checkpoint_lib.Checkpointer(str(tmp_path), keep=2)
  _, meta = resumed.resume(state)
  resumed.close()
  assert meta["step"] == 6 and checkpoint_steps(str(tmp_path)) == [4, 6]
  assert os.path.exists(tmp_path / "checkpoints" / "latest" / "6" / CHECKSUMS)
