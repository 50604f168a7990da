"""Task train_diffusion: a tiny UNet and DiT train on digits, write grids and metrics, and resume
bit-identically after a stop request; the configs validate."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from configs import diffusion as diffusion_configs
from jaxsynth import config as config_lib
from jaxsynth.errors import ConfigError
from jaxsynth.tasks import TASKS
from jaxsynth.tasks.diffusion import build_setup, train_diffusion
from jaxsynth.training.loop import Preempted, StopRequest
from tests.helpers import checkpoint_steps, load_params, tiny_diffusion_config
from tests.test_training import assert_trees_equal

STEPS = 6


@pytest.fixture(scope="module", params=["unet", "dit"])
def uninterrupted(request, tmp_path_factory):
  name = request.param
  workdir = str(tmp_path_factory.mktemp(f"full-{name}"))
  results = train_diffusion(tiny_diffusion_config(name, STEPS), workdir)
  return name, workdir, results


def test_run_writes_metrics_logs_and_grids(uninterrupted):
  _, workdir, results = uninterrupted
  with open(os.path.join(workdir, "metrics.json")) as f:
    metrics = json.load(f)
  assert metrics == json.loads(json.dumps(results))
  assert metrics["steps"] == STEPS and np.isfinite(metrics["train"]["loss"])
  assert np.isfinite(metrics["val"]["loss"]) and metrics["checkpoint"]["latest"] == STEPS
  lines = [json.loads(l) for l in open(os.path.join(workdir, "log.jsonl"))]
  assert [l["step"] for l in lines if "train/loss" in l] == list(range(1, STEPS + 1))
  assert [l["step"] for l in lines if "val/loss" in l] == [3, 6]
  # A row of 2 samples per class (10 digits) at 8 px, every 3 steps; nothing in samples/.
  assert sorted(os.listdir(os.path.join(workdir, "grids"))) == ["step-000003.png",
                                                                 "step-000006.png"]
  grid = np.asarray(Image.open(os.path.join(workdir, "grids", "step-000006.png")))
  assert grid.shape == (10 * 8, 2 * 8, 3) and grid.std() > 0
  assert not os.path.exists(os.path.join(workdir, "samples"))
  assert os.listdir(os.path.join(workdir, "tensorboard"))
  assert checkpoint_steps(workdir, "best")


def test_interrupted_run_resumes_bit_identically(uninterrupted, tmp_path):
  name, full_dir, _ = uninterrupted
  workdir = str(tmp_path / "resumed")
  # Grids and validation read the state but never change it; off here to save compiles.
  config = tiny_diffusion_config(name, STEPS, train__sample_every=0, diffusion__val_batches=0)
  with pytest.raises(Preempted):
    train_diffusion(config, workdir, stop=StopRequest(at_step=3))
  assert checkpoint_steps(workdir)[-1] == 3
  assert not os.path.exists(os.path.join(workdir, "metrics.json"))
  train_diffusion(config, workdir)
  assert_trees_equal(load_params(workdir, STEPS), load_params(full_dir, STEPS))


@pytest.mark.parametrize("variant", ["unet", "dit", "sample"])
def test_configs_validate(variant):
  config = diffusion_configs.get_config(variant)
  config_lib.validate(config, TASKS)
  assert config.task == ("sample" if variant == "sample" else "train_diffusion")


def test_bad_diffusion_keys_are_clear_errors():
  config = tiny_diffusion_config("unet")
  config.diffusion.prediction = "score"
  with pytest.raises(ConfigError, match="diffusion.prediction.*eps, x0, v"):
    build_setup(config)
  config = tiny_diffusion_config("unet")
  config.model.name = "resnet18"
  with pytest.raises(ConfigError, match="model.name.*unet, dit"):
    build_setup(config)
  config = tiny_diffusion_config("unet", diffusion__label_dropout=0.0)
  with pytest.raises(ConfigError, match="label_dropout"):
    build_setup(config)
