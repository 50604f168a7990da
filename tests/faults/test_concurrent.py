"""Two commands on one workdir: the second is refused at once, naming the first; a lock left
by a dead process is taken over."""

import json
import os
import socket

import pytest

from jaxsynth.errors import BusyError, CheckpointError
from jaxsynth.training import workdir as workdir_lib
from tests.faults import harness


def test_second_command_on_a_busy_workdir_is_refused(tmp_path, inputs):
  workdir = str(tmp_path / "run")
  os.makedirs(workdir)
  with workdir_lib.WorkdirLock(workdir):
    record = harness.run_once(harness.CASES["train_classifier"].args(inputs), workdir)
  assert record.returncode == 2
  (line,) = [l for l in record.stderr_tail.splitlines() if l.startswith("jaxsynth: error:")]
  assert f"in use by pid {os.getpid()} on host {socket.gethostname()}" in line
  assert os.listdir(workdir) == []  # nothing written, and the lock file went with the lock


def test_stale_lock_of_a_dead_process_is_taken_over(tmp_path, caplog):
  workdir = tmp_path / "run"
  workdir.mkdir()
  (workdir / workdir_lib.LOCK_FILE).write_text(json.dumps(
      {"pid": 999999999, "host": socket.gethostname(), "started": 0, "command": "killed"}))
  with workdir_lib.WorkdirLock(str(workdir)) as lock:
    holder = json.loads(open(lock.path).read())
    assert holder["pid"] == os.getpid()
  assert "took over the lock of pid 999999999" in caplog.text
  assert not (workdir / workdir_lib.LOCK_FILE).exists()


def test_lock_in_this_process_refuses_a_second_holder(tmp_path):
  with workdir_lib.WorkdirLock(str(tmp_path)):
    with pytest.raises(BusyError, match=f"pid {os.getpid()}"):
      workdir_lib.WorkdirLock(str(tmp_path)).acquire()


def test_workdir_that_is_a_file_is_refused(tmp_path):
  path = tmp_path / "file"
  path.write_text("x")
  with pytest.raises(CheckpointError, match="is a file"):
    workdir_lib.WorkdirLock(str(path)).acquire()
  assert path.read_text() == "x"


def test_lock_removes_the_directory_it_created_when_empty(tmp_path):
  workdir = tmp_path / "new"
  with workdir_lib.WorkdirLock(str(workdir)):
    assert workdir.is_dir()
  assert not workdir.exists()
