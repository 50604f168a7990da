"""Task train_autoencoder: tiny VQ (EMA codebook, critic, dead-code restarts) and KL runs on
digits write grids, logs and metrics; bad keys are clear errors. Resume after SIGKILL is the
fault harness's (tests/faults/harness.py, case train_autoencoder)."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from configs import autoencoder as autoencoder_configs
from jaxsynth.errors import ConfigError
from jaxsynth.tasks import TASKS
from jaxsynth.tasks.autoencoder import build_setup, train_autoencoder
from tests.helpers import checkpoint_steps

STEPS = 6


def _config(name: str, **train):
  config = autoencoder_configs.get_config(f"{name}:tiny")
  config.data.threads = 2
  config.train.update(keep_checkpoints=10, log_every=1, **train)
  if name == "vq":
    # An EMA codebook (the harness in tests/faults runs the codebook-loss one), the critic from
    # step 2; codes unused for two steps (usage share 1/16 * 0.99^2) restart.
    config.model.ema_decay = 0.99
    config.loss.update(disc_weight=0.8, disc_start=2)
    config.train.restart_threshold = 0.0615
  return config


@pytest.fixture(scope="module", params=["vq", "kl"])
def uninterrupted(request, tmp_path_factory):
  name = request.param
  workdir = str(tmp_path_factory.mktemp(f"ae-{name}"))
  return name, workdir, train_autoencoder(_config(name), workdir)


def test_run_writes_metrics_logs_and_grids(uninterrupted):
  name, workdir, results = uninterrupted
  with open(os.path.join(workdir, "metrics.json")) as f:
    metrics = json.load(f)
  assert metrics == json.loads(json.dumps(results))
  assert metrics["steps"] == STEPS and metrics["latent_shape"] == [6, 6, 3]
  val = metrics["val"]
  assert 0 < val["psnr"] < 60 and 0 < val["l1"] and -1 <= val["ssim"] <= 1
  # per class: means over each label's images, weighted by their counts back to the overall mean
  per_class, counts = val["per_class"], np.asarray(val["per_class"]["count"])
  assert counts.sum() > 0 and len(counts) == 10
  for key in ("psnr", "ssim", "l1"):
    seen = [v for v, n in zip(per_class[key], counts) if n]
    assert np.isclose(np.dot(seen, counts[counts > 0]) / counts.sum(), val[key])
  lines = [json.loads(l) for l in open(os.path.join(workdir, "log.jsonl"))]
  assert [l["step"] for l in lines if "val/psnr" in l] == [3, 6]
  train = [l for l in lines if "train/loss" in l]
  assert [l["step"] for l in train] == list(range(1, STEPS + 1))
  if name == "vq":
    assert 0 < val["codebook_usage"] <= 1 and 1 <= val["perplexity"] <= 16
    assert sum(l["train/codes_restarted"] for l in train) > 0
    # The adversarial term is off before disc_start and weighted adaptively after it.
    assert [l["train/adaptive_weight"] > 0 for l in train] == [False] * 2 + [True] * 4
  else:
    assert "codebook_usage" not in val and train[-1]["train/kl"] > 0
  assert sorted(os.listdir(os.path.join(workdir, "grids"))) == ["step-000003.png",
                                                                 "step-000006.png"]
  grid = np.asarray(Image.open(os.path.join(workdir, "grids", "step-000006.png")))
  assert grid.shape == (2 * 12, 4 * 12, 3) and grid.std() > 0   # originals over reconstructions
  assert checkpoint_steps(workdir, "best")


@pytest.mark.parametrize("variant", ["vq", "kl", "vq:tiny", "kl:tiny"])
def test_configs_select_the_task(variant):
  config = autoencoder_configs.get_config(variant)
  assert config.task == "train_autoencoder" and "train_autoencoder" in TASKS
  assert config.model.name == variant.split(":")[0]
  with pytest.raises(ValueError, match="unknown configs/autoencoder.py variant"):
    autoencoder_configs.get_config("gan")


@pytest.mark.parametrize("change, message", [
    (lambda c: c.model.update(name="vqgan"), "'model.name' has unknown value 'vqgan'"),
    (lambda c: c.model.update(channels=(8, 16, 16, 16)),
     "downsample by 8, which must divide the 12x12"),
    (lambda c: c.model.update(channels=(8, 10)), "'model.channels' has bad value"),
    (lambda c: c.data.update(image_size=8), "SSIM needs images of at least 11 px"),
    (lambda c: c.loss.update(l1_weight=0.0, ssim_weight=0.0),
     "at least one reconstruction term"),
    (lambda c: c.train.update(adam_betas=(0.5,)), "'train.adam_betas'"),
    (lambda c: c.model.update(ema_decay=1.0), "'model.ema_decay' has bad value 1.0"),
])
def test_bad_keys_are_clear_errors(change, message):
  config = autoencoder_configs.get_config("vq:tiny")
  change(config)
  with pytest.raises(ConfigError, match=message):
    build_setup(config)


def test_cli_refuses_a_bad_config_before_writing(tmp_path):
  from tests.test_bad_inputs import run_cli
  workdir = tmp_path / "never"
  proc = run_cli("--config", "configs/autoencoder.py:vq:tiny", "--workdir", str(workdir),
                 "--config.model.channels=(8,16,16,16)")
  assert proc.returncode == 2 and "must divide the 12x12 images" in proc.stderr
  assert len(proc.stderr.strip().splitlines()) == 1 and not workdir.exists()


def test_lpips_term_trains_and_is_reported(tmp_path, monkeypatch):
  from jaxsynth.models import lpips
  from jaxsynth.models.convert import save_safetensors
  from tests.test_lpips import _torch_layout
  # A two-conv backbone in VGG's layout keeps the compile short; the real VGG16 / AlexNet
  # conversions are checked in tests/test_lpips.py.
  monkeypatch.setitem(lpips.NETS, "tiny", dict(convs=[(0, 4, 3, 1, 1), (3, 8, 3, 1, 1)],
                                               pool_before=(3,), pool=(2, 2, 0), taps=(0, 3)))
  monkeypatch.setitem(lpips.MIN_SIZE, "tiny", 16)
  backbone, lin = _torch_layout("tiny")
  save_safetensors(str(tmp_path / "backbone.safetensors"), backbone)
  save_safetensors(str(tmp_path / "lin.safetensors"), lin)
  config = autoencoder_configs.get_config("kl:tiny")
  config.data.update(image_size=16, threads=2)
  config.train.update(steps=2, eval_every=2, checkpoint_every=2, sample_every=0, log_every=1)
  config.loss.update(lpips_weight=1.0, lpips_backbone=str(tmp_path / "backbone.safetensors"),
                     lpips_lin=str(tmp_path / "lin.safetensors"), lpips_net="tiny")
  results = train_autoencoder(config, str(tmp_path / "run"))
  assert results["val"]["lpips"] > 0 and results["train"]["lpips"] > 0
  config.loss.lpips_lin = ""
  with pytest.raises(ConfigError, match="LPIPS needs its weights"):
    build_setup(config)
  config.loss.update(lpips_lin=str(tmp_path / "lin.safetensors"), lpips_net="vgg")
  config.data.image_size = 12
  with pytest.raises(ConfigError, match="LPIPS-vgg needs images of at least 16 px"):
    build_setup(config)
