"""Multi-host on one machine: two CPU processes must train exactly what one process trains."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCHER = os.path.join(ROOT, "launch", "local_multiprocess.sh")
STEPS = 6
RUN_FLAGS = ["--config", "configs/default.py:classifier", f"--config.train.steps={STEPS}",
             "--config.train.batch_size=16", "--config.model.width=8",
             "--config.train.eval_every=3", "--config.train.log_every=1"]
TIMEOUT_S = 240  # both runs together; about 60 s on an idle 2-core machine
# Adam divides each update by sqrt(v): where a gradient is near zero, float32 reduction-order
# noise becomes a visible share of one step (lr = 1e-3); measured differences are <= 2e-6.
STATE_ATOL = 1e-5


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _env(**extra) -> dict:
  """A clean environment: CPU only, no inherited XLA or jaxsynth multi-host settings."""
  env = {k: v for k, v in os.environ.items()
         if not k.startswith(("XLA_", "JAX_", "JAXSYNTH_"))}
  # Unoptimised XLA code compiles ~4x faster here (ResNet init alone: 23 s -> 3 s); both runs
  # use the same flags, so the comparison is unaffected.
  env.update(JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_backend_optimization_level=0",
             PYTHONPATH=ROOT + os.pathsep + env.get("PYTHONPATH", ""), **extra)
  return env


def _tail(path: str, lines: int = 25) -> str:
  if not os.path.exists(path):
    return f"<{path} missing>"
  with open(path, encoding="utf-8", errors="replace") as f:
    return f"== {path}\n" + "".join(f.readlines()[-lines:])


def _stop(proc: subprocess.Popen) -> None:
  """Kills the process group this test started for `proc` (the launcher and its children)."""
  if proc.poll() is None:
    try:
      os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
      pass
  proc.wait(timeout=30)


def _load_state(workdir: str, step: int) -> dict:
  """The orbax train state of `step` as numpy, whatever topology saved it (no target needed)."""
  path = os.path.join(workdir, "checkpoints", "latest", str(step), "state")
  checkpointer = ocp.PyTreeCheckpointer()
  tree = checkpointer.metadata(path).item_metadata.tree
  restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
  return checkpointer.restore(path, restore_args=restore_args)


def _read_json(path: str):
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def _read_log(workdir: str) -> list[dict]:
  with open(os.path.join(workdir, "log.jsonl"), encoding="utf-8") as f:
    return [json.loads(line) for line in f]


def _assert_numbers_close(a, b, where: str) -> None:
  """Same structure, numbers within float32 reduction-order noise."""
  if isinstance(a, dict):
    assert sorted(a) == sorted(b), f"{where}: keys differ"
    for k in a:
      _assert_numbers_close(a[k], b[k], f"{where}.{k}")
  elif isinstance(a, (list, int, float)) and not isinstance(a, bool):
    np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b, np.float64),
                               rtol=1e-5, atol=1e-6, err_msg=where)
  else:
    assert a == b, f"{where}: {a!r} != {b!r}"


def _run_side_by_side(flags: list[str], multi: str, single: str, logs: str) -> None:
  """Runs `jaxsynth.main FLAGS` as 2 processes (through the launcher) into `multi` and as one
  process into `single`, side by side; fails the test unless both finish with status 0."""
  os.makedirs(logs, exist_ok=True)
  procs = {}
  try:
    with open(os.path.join(logs, "launcher.log"), "wb") as launcher_log, \
         open(os.path.join(logs, "single.log"), "wb") as single_log:
      procs["two processes"] = subprocess.Popen(
          ["bash", LAUNCHER, "2", "--", *flags, "--workdir", multi], cwd=ROOT,
          env=_env(PORT=str(_free_port()), LOG_DIR=logs, PYTHON=sys.executable, GRACE_S="5"),
          stdout=launcher_log, stderr=subprocess.STDOUT, start_new_session=True)
      procs["one process"] = subprocess.Popen(
          [sys.executable, "-m", "jaxsynth.main", *flags, "--workdir", single], cwd=ROOT,
          env=_env(), stdout=single_log, stderr=subprocess.STDOUT, start_new_session=True)
      deadline = time.monotonic() + TIMEOUT_S
      while any(p.poll() is None for p in procs.values()):
        if time.monotonic() > deadline:
          break
        if any(p.poll() not in (None, 0) for p in procs.values()):
          break
        time.sleep(0.5)
    codes = {name: p.poll() for name, p in procs.items()}
    if any(code != 0 for code in codes.values()):
      names = ["launcher.log", "process_0.log", "process_1.log", "single.log"]
      details = "\n".join(_tail(os.path.join(logs, n)) for n in names)
      pytest.fail(f"runs did not all finish within {TIMEOUT_S}s with status 0 "
                  f"(None = still running, killed): {codes}\n{details}")
  finally:
    for proc in procs.values():
      _stop(proc)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """The two-process training job and the one-process job, run side by side."""
  tmp = tmp_path_factory.mktemp("multihost")
  multi, single = str(tmp / "two"), str(tmp / "one")
  _run_side_by_side(RUN_FLAGS, multi, single, str(tmp / "logs"))
  return multi, single


def test_two_processes_train_the_same_parameters(runs):
  """The final train state of 2 processes x 1 device equals 1 process x 1 device."""
  multi, single = runs
  state2, state1 = _load_state(multi, STEPS), _load_state(single, STEPS)
  assert int(state2["step"]) == int(state1["step"]) == STEPS
  np.testing.assert_array_equal(state2["rng"], state1["rng"])
  paths1 = jax.tree_util.tree_leaves_with_path(state1)
  leaves2 = jax.tree.leaves(state2)
  assert jax.tree.structure(state1) == jax.tree.structure(state2)
  for (path, a), b in zip(paths1, leaves2):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5, atol=STATE_ATOL,
                               err_msg=jax.tree_util.keystr(path))


def test_two_processes_write_the_same_artifacts_once(runs):
  """Process 0 alone writes config.json, log.jsonl and metrics.json; they match one process."""
  multi, single = runs
  assert _read_json(os.path.join(multi, "config.json")) == _read_json(
      os.path.join(single, "config.json"))
  _assert_numbers_close(_read_json(os.path.join(multi, "metrics.json")),
                        _read_json(os.path.join(single, "metrics.json")), "metrics.json")
  log2, log1 = _read_log(multi), _read_log(single)
  assert [r["step"] for r in log2] == [r["step"] for r in log1]  # no line written twice
  for r2, r1 in zip(log2, log1):
    assert sorted(r2) == sorted(r1)
    for key in r1:
      if key != "train/steps_per_s":
        np.testing.assert_allclose(r2[key], r1[key], rtol=1e-5, atol=1e-6,
                                   err_msg=f"log.jsonl step {r1['step']} {key}")
  predictions2 = np.load(os.path.join(multi, "predictions.npz"), allow_pickle=False)
  predictions1 = np.load(os.path.join(single, "predictions.npz"), allow_pickle=False)
  assert sorted(predictions2.files) == sorted(predictions1.files)
  for name in predictions1.files:
    np.testing.assert_allclose(predictions2[name], predictions1[name], rtol=1e-5, atol=1e-6,
                               err_msg=name)
  assert not [n for n in os.listdir(multi) if n.startswith(".tmp-")]


def _fake_python(tmp_path, body: str) -> str:
  path = tmp_path / "fake_python"
  path.write_text("#!/usr/bin/env bash\n"
                  'for a in "$@"; do case $a in --process_id=*) id=${a#*=};; esac; done\n'
                  + body)
  path.chmod(0o755)
  return str(path)


def test_launcher_passes_flags_and_waits_for_all(tmp_path):
  """Every process gets the coordinator, the count and its own id after the user's flags."""
  fake = _fake_python(tmp_path, 'echo "$id $*" > "$OUT_DIR/args_$id"\n')
  result = subprocess.run(["bash", LAUNCHER, "3", "--", "--workdir", "W"], cwd=ROOT,
                          env=_env(PYTHON=fake, PORT="4321", OUT_DIR=str(tmp_path)),
                          capture_output=True, text=True, timeout=60)
  assert result.returncode == 0, result.stderr
  for i in range(3):
    args = (tmp_path / f"args_{i}").read_text().split()
    assert args == [str(i), "-m", "jaxsynth.main", "--workdir", "W",
                    "--coordinator_address=127.0.0.1:4321", "--num_processes=3",
                    f"--process_id={i}"]


def test_launcher_stops_the_others_when_one_fails(tmp_path):
  """Process 1 fails: the launcher exits with its status and kills a process ignoring SIGTERM."""
  fake = _fake_python(tmp_path, "if [[ $id == 1 ]]; then sleep 0.5; exit 3; fi\n"
                                "trap '' TERM\n"
                                'exec sleep 60\n')
  start = time.monotonic()
  result = subprocess.run(["bash", LAUNCHER, "3", "--", "--workdir", "W"], cwd=ROOT,
                          env=_env(PYTHON=fake, PORT="4321", GRACE_S="1"), capture_output=True,
                          text=True, timeout=60)
  assert result.returncode == 3, result.stderr
  assert time.monotonic() - start < 30
  assert "exited with status 3" in result.stderr


def test_launcher_rejects_bad_usage():
  """A missing `--` or a bad process count is a usage error (status 2)."""
  for args in (["2", "--config", "x"], ["zero", "--", "--config", "x"], []):
    result = subprocess.run(["bash", LAUNCHER, *args], cwd=ROOT, capture_output=True,
                            text=True, timeout=30)
    assert result.returncode == 2 and "usage" in result.stderr


def test_two_processes_sweep_the_same_shards_once(tmp_path):
  """A `sample` sweep on 2 processes x 1 device: each process writes its own shards (k mod 2),
  and together they hold exactly the bytes one process writes; one manifest, by process 0."""
  from jaxsynth.tasks.diffusion import train_diffusion
  from tests.helpers import tiny_diffusion_config
  trained = str(tmp_path / "trained")
  train_diffusion(tiny_diffusion_config("dit", steps=2, train__sample_every=0,
                                        diffusion__val_batches=0), trained)
  flags = ["--config", "configs/diffusion.py:sample", f"--config.sample.run_dir={trained}",
           "--config.sample.per_class=111", "--config.sample.num_steps=5",
           "--config.sample.shard_size=6", "--config.sample.batch_size=4"]
  multi, single = str(tmp_path / "two"), str(tmp_path / "one")
  _run_side_by_side(flags, multi, single, str(tmp_path / "logs"))
  with open(tmp_path / "logs" / "process_1.log", encoding="utf-8") as f:
    assert "process 1 of 2" in f.read()
  shards = sorted(os.listdir(os.path.join(single, "samples")))
  assert sorted(os.listdir(os.path.join(multi, "samples"))) == shards
  assert len([n for n in shards if n.startswith("shard-")]) == 6  # 31 samples in shards of 6
  for name in shards:
    if name.startswith("shard-"):
      with open(os.path.join(multi, "samples", name), "rb") as f2, \
           open(os.path.join(single, "samples", name), "rb") as f1:
        assert f2.read() == f1.read(), name
  manifest2 = _read_json(os.path.join(multi, "samples", "manifest.json"))
  manifest1 = _read_json(os.path.join(single, "samples", "manifest.json"))
  assert manifest2["complete"] and manifest2["counts"] == manifest1["counts"]
  assert manifest2["shards"] == manifest1["shards"]
