"""Latent caching and latent diffusion: a tiny VQ autoencoder's latents are cached (resumably,
checked against the weights and data they came from); a recipe's LDM generator trains on them
and its sweep decodes the samples into the usual image shards. (SIGKILL and resume of both:
tests/faults, cases ldm and ldm_sample.)"""

import json
import os

import jax.numpy as jnp
import numpy as np
import pytest

from configs import autoencoder as autoencoder_configs
from configs import diffusion as diffusion_configs
from jaxsynth.data import augment, pipeline
from jaxsynth.data.sources import open_source
from jaxsynth.errors import DataError
from jaxsynth.synthesis import latents
from jaxsynth.tasks.autoencoder import train_autoencoder
from jaxsynth.tasks.sample import sample


@pytest.fixture(scope="module")
def autoencoder_run(tmp_path_factory):
  config = autoencoder_configs.get_config("vq:tiny")
  config.data.threads = 2
  config.train.update(steps=4, sample_every=0)
  workdir = str(tmp_path_factory.mktemp("vq"))
  train_autoencoder(config, workdir)
  return workdir, config


def test_cache_holds_the_encoded_splits_and_resumes(autoencoder_run, tmp_path, monkeypatch):
  run_dir, config = autoencoder_run
  monkeypatch.setattr(latents, "SHARD_SIZE", 256)
  first = latents.Autoencoder(run_dir, "latest")
  cache = str(tmp_path / "cache")
  manifest = latents.build_cache(cache, first, config.data, config.seed)
  assert manifest["latent_shape"] == [6, 6, 3] and manifest["autoencoder"]["step"] == 4
  train = open_source(config.data, "train", seed=config.seed)
  assert [s["count"] for s in manifest["splits"]["train"]["shards"]] == [256] * 4 + [55]
  source = latents.LatentSource(cache, "train")
  np.testing.assert_array_equal(source.labels, train.labels)
  # Each cached latent is the encoder's output for that image, times the scale factor ...
  norm = augment.normalisation(config.data, 1)
  x = np.stack([augment.preprocess(train.load_image(i), config.data, None, norm)
                for i in (0, 700)])
  expected = np.asarray(first.encode_fn(jnp.asarray(x))) * manifest["scale_factor"]
  np.testing.assert_allclose(np.stack([source[0]["image"], source[700]["image"]]), expected,
                             rtol=1e-5, atol=1e-6)
  # Decoding the cache is decoding the encoded images (the round trip of an LDM sample) ...
  np.testing.assert_allclose(first.decode_fn(jnp.asarray(source.latents[np.array([0, 700])])),
                             first.decode_fn(first.encode_fn(jnp.asarray(x))), atol=1e-5)
  # ... and the scale makes the train latents unit-variance (LDM's scale_by_std).
  np.testing.assert_allclose(np.std(source.latents) * source.scale_factor, 1.0, rtol=1e-5)
  # The float records pass the pipeline as they are.
  batch = next(iter(pipeline.eval_dataset(source, latents.latent_data_config(config.data),
                                          global_batch=2)))
  np.testing.assert_array_equal(batch["image"][0], source[0]["image"])

  # A killed run leaves the shards it finished listed; the rerun encodes only the others.
  path = os.path.join(cache, "manifest.json")
  cut = json.load(open(path))
  cut["splits"]["train"]["shards"] = cut["splits"]["train"]["shards"][:2]
  del cut["splits"]["val"], cut["scale_factor"]
  open(path, "w").write(json.dumps(cut))
  kept = os.stat(os.path.join(cache, "train", "shard-00001.npz")).st_mtime_ns
  again = latents.build_cache(cache, first, config.data, config.seed)
  assert again == manifest
  assert os.stat(os.path.join(cache, "train", "shard-00001.npz")).st_mtime_ns == kept


def test_cache_refuses_other_weights_other_data_and_damage(autoencoder_run, tmp_path):
  run_dir, config = autoencoder_run
  autoencoder = latents.Autoencoder(run_dir, "latest")
  cache = str(tmp_path / "cache")
  latents.build_cache(cache, autoencoder, config.data, config.seed, splits=("val",))
  other = config.data.copy_and_resolve_references()
  other.mean = 0.4
  with pytest.raises(DataError, match="another data config"):
    latents.build_cache(cache, autoencoder, other, config.seed, splits=("val",))
  manifest = json.load(open(os.path.join(cache, "manifest.json")))
  manifest["autoencoder"]["params_sha256"] = "0" * 64
  open(os.path.join(cache, "manifest.json"), "w").write(json.dumps(manifest))
  with pytest.raises(DataError, match="another autoencoder checkpoint"):
    latents.build_cache(cache, autoencoder, config.data, config.seed, splits=("val",))
  with open(os.path.join(cache, "val", "shard-00000.npz"), "r+b") as f:
    f.seek(200)
    f.write(b"\0\0\0\0")
  with pytest.raises(DataError, match="does not match its sha256"):
    latents.LatentSource(cache, "val")


def test_a_recipe_runs_with_a_latent_diffusion_generator(autoencoder_run, tmp_path):
  from configs import synthesis as synthesis_configs
  from jaxsynth.errors import ConfigError
  from jaxsynth.tasks.recipe import recipe
  run_dir, _ = autoencoder_run
  config = synthesis_configs.get_config("augment_ldm_tiny")
  assert config.data.image_size == 12               # the autoencoder's images
  bare = config.copy_and_resolve_references()
  del bare.generator["autoencoder"]                 # neither a run nor keys to train one
  with pytest.raises(ConfigError, match="generator.latent.autoencoder_run' is empty"):
    recipe(bare, str(tmp_path / "refused"))
  config.generator.latent.update(autoencoder_run=run_dir, checkpoint="latest")
  workdir = tmp_path / "recipe"
  results = recipe(config, str(workdir))
  assert "augmented" in json.dumps(results)
  assert not (workdir / "autoencoder").exists()    # the given run is used, none is trained
  cache = json.load(open(workdir / "generator" / "latents" / "manifest.json"))
  assert cache["latent_shape"] == [6, 6, 3]
  # The sweep decoded the sampled latents into the usual image shards, the decoder timed apart.
  manifest = json.load(open(workdir / "sample" / "samples" / "manifest.json"))
  assert manifest["image_shape"] == [12, 12, 1] and manifest["latent"]["latent_shape"] == [6, 6, 3]
  assert manifest["latent"]["scale_factor"] == pytest.approx(cache["scale_factor"])
  with np.load(workdir / "sample" / "samples" / "shard-00000.npz") as f:
    assert f["images"].shape[1:] == (12, 12, 1) and f["images"].dtype == np.uint8
  sampled = json.load(open(workdir / "sample" / "metrics.json"))
  # 40 samples in batches of 32: the first batch compiles the decoder (timed apart), the second
  # (8 samples padded to 32 rows) is the timed one.
  assert sampled["samples"] == 40 and sampled["decode"]["images"] == 32
  assert os.path.exists(workdir / "report.md")

  # Decoding with other weights than the latents came from is refused.
  cache["autoencoder"]["params_sha256"] = "0" * 64
  (workdir / "generator" / "latents" / "manifest.json").write_text(json.dumps(cache))
  sweep = diffusion_configs.get_config("sample")
  sweep.sample.update(run_dir=str(workdir / "generator"), budget="counts",
                      class_counts=(1,) + (0,) * 9, num_steps=2, batch_size=1)
  with pytest.raises(DataError, match="is not the one .* was trained on"):
    sample(sweep, str(tmp_path / "sweep"))
  online = synthesis_configs.get_config("online_tiny")
  online.unlock()
  online.generator.latent = config.generator.latent
  with pytest.raises(ConfigError, match="latent diffusion generator .* not supported"):
    recipe(online, str(tmp_path / "online"))


def _stage_tasks():
  from jaxsynth.tasks import get_task
  from jaxsynth.tasks.recipe import STAGE_TASKS
  return {name: get_task(name) for name in STAGE_TASKS}


def test_ldm_configs_train_their_autoencoder_then_sample_and_decode(tmp_path):
  """configs/diffupt_ldm.py:tiny trains its autoencoder as the recipe's first stage, the LDM on
  its latents, and decodes the sweep; configs/histo_ldm.py:dit:tiny's DiT (cosine schedule)
  does the same over that autoencoder. The stages after the sweep are the pixel recipes'."""
  from configs import diffupt_ldm, histo_ldm
  from jaxsynth.recipes import synthesis
  tasks = _stage_tasks()
  workdir = tmp_path / "diffupt_ldm"
  config = diffupt_ldm.get_config("tiny")
  pipe = synthesis.pipeline(config, str(workdir), tasks)
  assert list(pipe.stages)[:3] == ["autoencoder", "generator", "sample"]
  assert pipe.stages["generator"].config.latent.autoencoder_run == \
      os.path.abspath(workdir / "autoencoder")
  pipe.run(only=("autoencoder", "generator", "sample"))
  trained = json.load(open(workdir / "autoencoder" / "metrics.json"))
  assert trained["val"]["psnr"] > 0
  manifest = json.load(open(workdir / "sample" / "samples" / "manifest.json"))
  assert manifest["image_shape"] == [12, 12, 1] and manifest["latent"]["latent_shape"] == [6, 6, 3]
  assert pipe.status()["autoencoder"] == "done"   # a rerun skips the finished stages

  config = histo_ldm.get_config("dit:tiny")
  config.generator.latent.update(autoencoder_run=str(workdir / "autoencoder"),
                                 checkpoint="latest")
  pipe = synthesis.pipeline(config, str(tmp_path / "histo"), tasks)
  assert "autoencoder" not in pipe.stages
  generator = pipe.stages["generator"].config
  assert generator.model.name == "dit" and generator.diffusion.schedule == "cosine"
  pipe.run(only=("generator", "sample"))
  with np.load(tmp_path / "histo" / "sample" / "samples" / "shard-00000.npz") as f:
    assert f["images"].shape[1:] == (12, 12, 1) and f["images"].dtype == np.uint8


@pytest.mark.parametrize("module,image_size,latent_shape", [
    ("diffupt_ldm", 512, (32, 32, 16)), ("histo_ldm", 96, (24, 24, 4))])
def test_published_ldm_configs_have_the_papers_latent_sizes(module, image_size, latent_shape):
  """DiffuPT: 512 px <-> 32x32x16 (f = 16); histopathology: 96 px <-> 24x24x4 (f = 4); the
  latent UNet's attention resolutions exist at that latent size (shapes only, nothing runs)."""
  import importlib

  import jax
  from jaxsynth.models.autoencoder import make_autoencoder
  config = importlib.import_module(f"configs.{module}").get_config()
  assert config.data.image_size == image_size
  model = make_autoencoder(config.generator.autoencoder.model, image_channels=3).autoencoder
  x = jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32)
  z, _ = jax.eval_shape(lambda x: model.init_with_output(jax.random.PRNGKey(0), x,
                                                         method=model.encode)[0], x)
  assert tuple(z.shape[1:]) == latent_shape
  unet = config.generator.model.unet
  levels = [latent_shape[0] // 2 ** i for i in range(len(unet.channels))]
  assert set(unet.attn_resolutions) <= set(levels)
