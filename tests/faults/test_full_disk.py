"""A full disk (or a file-size limit): one line naming the path and the bytes needed, what was
saved before intact, and the same command resumes once there is room."""

import os

import pytest

from jaxsynth import files
from jaxsynth.errors import StorageError
from jaxsynth.tasks import classifier
from tests.faults import harness
from tests.faults.conftest import tiny_classifier_config
from tests.helpers import assert_trees_equal, checkpoint_steps, load_params


def error_lines(stderr):
  return [line for line in stderr.splitlines() if line.startswith("jaxsynth: error:")]


# A checkpoint that does not fit: test_disk_full_mid_run_keeps_earlier_checkpoints_and_resumes.
@pytest.mark.parametrize("name, limit_kb, path", [
    ("sample", 4, "samples/manifest.json"),            # the sweep's manifest does not fit
])
def test_write_past_the_limit_is_one_line_and_the_rerun_finishes(name, limit_kb, path, references,
                                                                  inputs, tmp_path):
  case = harness.CASES[name]
  workdir = str(tmp_path / name)
  record = harness.run_once(case.args(inputs), workdir, file_size_limit_kb=limit_kb)
  assert record.returncode == 2, record.stderr_tail
  assert "Traceback" not in record.stderr_tail
  (line,) = error_lines(record.stderr_tail)
  assert os.path.join(workdir, path) in line and "bytes" in line and "rerun" in line
  assert not os.path.exists(os.path.join(workdir, "metrics.json"))
  again = harness.run_once(case.args(inputs), workdir)
  assert again.returncode == 0, again.stderr_tail
  assert harness.compare(references[name][1], case.outcome(workdir)) == []


def test_disk_full_mid_run_keeps_earlier_checkpoints_and_resumes(uninterrupted, tmp_path,
                                                                monkeypatch):
  full_dir, workdir = uninterrupted, str(tmp_path / "run")
  config = tiny_classifier_config()
  real_free = files.free_bytes

  def free_bytes(path):  # the disk fills up just before the step-6 checkpoint
    return 0 if os.sep + "6" in path else real_free(path)

  monkeypatch.setattr(files, "free_bytes", free_bytes)
  with pytest.raises(StorageError, match=r"checkpoints/(best|latest)/6 .*needs about [\d,]+ "
                                         r"bytes.*rerun"):
    classifier.train_and_evaluate(config, workdir)
  assert checkpoint_steps(workdir) == [2, 4]
  monkeypatch.setattr(files, "free_bytes", real_free)  # space freed
  classifier.train_and_evaluate(config, workdir)
  assert_trees_equal(load_params(workdir, 8), load_params(full_dir, 8))


def test_atomic_write_out_of_space_leaves_the_old_file(tmp_path, monkeypatch):
  path = str(tmp_path / "metrics.json")
  files.atomic_write(path, b"old")
  monkeypatch.setattr(files, "free_bytes", lambda p: 10)
  with pytest.raises(StorageError, match=f"cannot write {path}.*needs about 1,000 bytes"):
    files.atomic_write(path, b"x" * 1000)
  assert open(path, "rb").read() == b"old"
  assert os.listdir(tmp_path) == ["metrics.json"]
