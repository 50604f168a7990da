"""The command line: config errors are one line with exit 2; a tiny run leaves the contract files."""

import json
import os
import subprocess
import sys

import pytest

from configs import classifier, default
from jaxsynth import config as config_lib
from jaxsynth.errors import ConfigError
from jaxsynth.tasks import TASKS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_cli(*args, timeout=300):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, "-m", "jaxsynth.main", *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("override,expected", [
    ("--config.trian.steps=3", "unknown config key 'trian' (did you mean 'train'?)"),
    ("--config.train.zzz=3", "unknown config key 'zzz'"),
    ("--config.train.steps=abc", "--config.train.steps=abc"),
    ("--config.task=trian", "config key 'task' has bad value 'trian'"),
    ("--config.data.source=npz", "config key 'data.path'"),
    ("--config.train.optimizer=lamb", "config key 'train.optimizer'"),
])
def test_config_errors_are_one_line(tmp_path, override, expected):
  proc = run_cli("--config", "configs/default.py:classifier", "--workdir", str(tmp_path / "run"),
                 override)
  assert proc.returncode == 2
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("jaxsynth: error:"), proc.stderr
  assert expected in lines[0]
  assert not os.path.exists(tmp_path / "run" / "checkpoints")


def test_missing_config_file_is_one_line(tmp_path):
  proc = run_cli("--config", "configs/missing.py", "--workdir", str(tmp_path))
  assert proc.returncode == 2
  assert len(proc.stderr.strip().splitlines()) == 1 and "configs/missing.py" in proc.stderr


def test_missing_data_file_is_one_line(tmp_path):
  proc = run_cli("--config", "configs/classifier.py:npz", "--workdir", str(tmp_path / "run"),
                 f"--config.data.path={tmp_path}/absent.npz")
  assert proc.returncode == 2
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and "absent.npz" in lines[0], proc.stderr


def test_variant_and_overrides_reach_the_run(tmp_path):
  workdir = tmp_path / "run"
  proc = run_cli("--config", "configs/classifier.py:digits", "--workdir", str(workdir),
                 "--config.train.steps=2", "--config.train.batch_size=16",
                 "--config.model.width=8", "--config.data.image_size=8",
                 "--config.train.eval_batch_size=64")
  assert proc.returncode == 0, proc.stderr[-2000:]
  resolved = json.loads((workdir / "config.json").read_text())
  assert resolved["train"]["steps"] == 2 and resolved["data"]["source"] == "digits"
  metrics = json.loads((workdir / "metrics.json").read_text())
  assert set(metrics) >= {"val", "test"}
  again = run_cli("--config", "configs/classifier.py:digits", "--workdir", str(workdir),
                  "--config.train.steps=2")
  assert again.returncode == 2 and "--overwrite" in again.stderr


def test_every_shipped_config_validates():
  for name in ("default", "classifier"):
    module = {"default": default, "classifier": classifier}[name]
    config_lib.validate(module.get_config(), TASKS)
  config_lib.validate(default.get_config("classifier"), TASKS)
  for variant in ("digits", "npz", "folder", "tfds", "synthetic"):
    config = classifier.get_config(variant)
    config.data.path = "x"
    config.data.tfds_name = "x"
    config_lib.validate(config, TASKS)


def test_validate_names_the_bad_key():
  config = default.get_config("classifier")
  config.train.ema_decay = 1.5
  with pytest.raises(ConfigError, match="train.ema_decay"):
    config_lib.validate(config, TASKS)


@pytest.mark.parametrize("key, value, channels", [("channel_mean", (0.5, 0.5), 0),
                                                  ("channel_std", (0.2, 0.0, 0.2), 0),
                                                  ("channel_mean", (0.4, 0.4, 0.4), 1)])
def test_validate_checks_per_channel_normalisation(key, value, channels):
  config = default.get_config("classifier")
  config.data.channels = channels
  config.data[key] = value
  with pytest.raises(ConfigError, match=f"data.{key}"):
    config_lib.validate(config, TASKS)
