"""Latent caching: a data set encoded once by a trained `train_autoencoder` run, so that a latent
denoiser trains on latents, not images (LDM, Rombach et al. 2022).

A cache directory holds, per split, shards `{split}/shard-NNNNN.npz` with `latents` float32
(N, h, w, c) (the VQ run's quantised latent, the KL run's posterior mean), `labels` int64,
`index` int64 (the sample's position in the split) and `groups` int64 when the data has them;
and `manifest.json`:

  autoencoder   {"run_dir", "step", "params_sha256"}: the checkpoint the latents came from
  data          the data config the split was read with
  latent_shape  [h, w, c];  num_classes, class_names, group_names
  splits        {split: {"count": N, "shards": [{"file", "count", "sha256"}, ...]}}
  scale_factor  1 / std of every train latent value (LDM's scale factor, measured from the
                data as their `scale_by_std`); a denoiser sees latent * scale_factor

Shards are written atomically and listed in the manifest as they finish, so a killed caching
run resumes at the first missing shard. A cache made from another checkpoint (its parameters'
digest) or another data config is refused with a one-line error rather than mixed.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import time
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from jaxsynth import config as config_lib
from jaxsynth import files
from jaxsynth.data import pipeline
from jaxsynth.data.base import ImageSource, SubsetSource
from jaxsynth.data.sources import open_source
from jaxsynth.data.synthetic_format import npz_bytes, shard_filename
from jaxsynth.errors import CheckpointError, DataError
from jaxsynth.models import autoencoder as ae
from jaxsynth.synthesis.generator import params_digest
from jaxsynth.training import parallel, train_state
from jaxsynth.training.checkpoint import Checkpointer
from jaxsynth.training.optim import make_optimizer

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
CACHE_DIR = "latents"     # a latent diffusion run's cache, inside its workdir
SHARD_SIZE = 1024


def latent_data_config(data_cfg) -> ml_collections.ConfigDict:
  """The data keys a pipeline over a latent cache reads: no resizing or channel conversion (the
  latents' shape is their own) and no augmentation."""
  view = ml_collections.ConfigDict(data_cfg.to_dict())
  view.image_size, view.channels = 0, 0
  for key in ("random_crop", "hflip", "vflip"):
    view.augment[key] = False
  view.augment.rotation, view.augment.color_jitter = 0.0, 0.0
  return view


class Autoencoder:
  """A loaded train_autoencoder run: its config, model and the weights of one checkpoint."""

  def __init__(self, run_dir: str, which: str = "best", key: str = "latent.autoencoder_run"):
    self.run_dir = os.path.abspath(run_dir)
    self.config = ml_collections.ConfigDict(
        config_lib.read_run_config(run_dir, "train_autoencoder", key))
    run = self.config
    train = open_source(run.data, "train", seed=run.seed)
    self.image_shape = pipeline.input_shape(run.data, train)
    full = ae.make_autoencoder(run.model, self.image_shape[-1],
                               with_critic=run.loss.disc_weight > 0)
    mesh = parallel.make_mesh(run.mesh)
    tx = make_optimizer(run.train, optax.constant_schedule(0.0))
    abstract = train_state.abstract_state(full, tx, self.image_shape, mesh)
    checkpointer = Checkpointer(run_dir, run.train.keep_checkpoints, read_only=True)
    try:
      if checkpointer.latest_step(which) is None:
        raise CheckpointError(f"no '{which}' checkpoint in {run_dir}/checkpoints: train the "
                              "autoencoder first, or choose the latest checkpoint")
      state, meta = checkpointer.restore(abstract, which)
    finally:
      checkpointer.close()
    self.step = int(meta["step"])
    self.model = full.autoencoder
    self.variables = {"params": state.ema_params["autoencoder"]}
    if ae.STATS in state.model_state:
      self.variables[ae.STATS] = state.model_state[ae.STATS]["autoencoder"]
    self.digest = params_digest(self.variables)
    self.latent_shape = (self.image_shape[0] // self.model.factor,
                         self.image_shape[1] // self.model.factor,
                         int(run.model.latent_channels))

  def identity(self) -> dict:
    """What names the weights the latents came from."""
    return {"run_dir": self.run_dir, "step": self.step, "params_sha256": self.digest}

  @functools.cached_property
  def encode_fn(self):
    """Jitted images -> latents (VQ: quantised; KL: the posterior mean)."""
    model, variables = self.model, self.variables
    return jax.jit(lambda x: model.apply(variables, x, method=model.encode)[0])

  @functools.cached_property
  def decode_fn(self):
    """Jitted latents -> images (normalised like the run's data)."""
    model, variables = self.model, self.variables
    return jax.jit(lambda z: model.apply(variables, z, method=model.decode))


def _read_manifest(cache_dir: str) -> dict | None:
  path = os.path.join(cache_dir, MANIFEST)
  if not os.path.exists(path):
    return None
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except (OSError, ValueError) as e:
    raise DataError(f"{path} cannot be read ({e}): delete the cache directory {cache_dir} and "
                    "rerun to encode the data again") from None


def _write_manifest(cache_dir: str, manifest: dict) -> None:
  files.atomic_write(os.path.join(cache_dir, MANIFEST),
                     json.dumps(manifest, indent=1, sort_keys=True).encode())


def _check_same(manifest: dict, autoencoder: Autoencoder, data: dict, cache_dir: str) -> None:
  """Refuses a cache of other weights or another data config."""
  old, new = manifest.get("autoencoder", {}), autoencoder.identity()
  if old.get("params_sha256") != new["params_sha256"]:
    raise DataError(f"the latent cache {cache_dir} was encoded by another autoencoder checkpoint "
                    f"({old.get('run_dir')} step {old.get('step')}, not {new['run_dir']} step "
                    f"{new['step']}): delete {cache_dir} to encode again, or use its autoencoder")
  if manifest.get("data") != data:
    raise DataError(f"the latent cache {cache_dir} holds another data config's latents: delete "
                    f"{cache_dir} to encode again, or restore the data keys it was made with")


def build_cache(cache_dir: str, autoencoder: Autoencoder, data_cfg, seed: int,
                splits=("train", "val"), batch_size: int = 64) -> dict:
  """Encodes `splits` of the data into `cache_dir` (resuming a partial cache); the manifest."""
  data = json.loads(config_lib.to_json(data_cfg))
  manifest = _read_manifest(cache_dir)
  if manifest is not None:
    _check_same(manifest, autoencoder, data, cache_dir)
  else:
    manifest = {"autoencoder": autoencoder.identity(), "data": data, "splits": {},
                "latent_shape": list(autoencoder.latent_shape)}
  for split in splits:
    source = open_source(data_cfg, split, seed=seed)
    shape = tuple(pipeline.input_shape(data_cfg, source))
    if shape != tuple(autoencoder.image_shape):
      raise DataError(f"data.{split} images are {shape}, the autoencoder "
                      f"{autoencoder.run_dir} was trained on {tuple(autoencoder.image_shape)}: "
                      "set data.image_size / data.channels to match")
    entry = manifest["splits"].setdefault(split, {"count": len(source), "shards": []})
    manifest.update(num_classes=source.num_classes, class_names=list(source.class_names),
                    group_names=list(getattr(source, "group_names", ())))
    done = sum(s["count"] for s in entry["shards"])
    if done >= len(source):
      continue
    encode = autoencoder.encode_fn
    os.makedirs(os.path.join(cache_dir, split), exist_ok=True)
    files.remove_stale_temporaries(os.path.join(cache_dir, split))   # a killed run's leftovers
    for start in range(done, len(source), SHARD_SIZE):
      stop = min(start + SHARD_SIZE, len(source))
      # The evaluation pipeline: every image once, preprocessed, padded to whole batches (one
      # compiled batch shape; the padding rows are dropped by their mask).
      part = SubsetSource(source, np.arange(start, stop))
      latents = [np.asarray(encode(jnp.asarray(batch["image"])))[np.asarray(batch["mask"]) > 0]
                 for batch in pipeline.eval_dataset(part, data_cfg, global_batch=batch_size)]
      arrays = {"latents": np.concatenate(latents).astype(np.float32),
                "labels": source.labels[start:stop],
                "index": np.arange(start, stop, dtype=np.int64)}
      if source.groups is not None:
        arrays["groups"] = source.groups[start:stop]
      name = shard_filename(len(entry["shards"]))
      payload = npz_bytes(arrays)
      files.atomic_write(os.path.join(cache_dir, split, name), payload,
                         fault="latents.before_rename")
      entry["shards"].append({"file": name, "count": stop - start,
                              "sha256": hashlib.sha256(payload).hexdigest()})
      _write_manifest(cache_dir, manifest)
      log.info("latent cache %s: %s %d/%d encoded", cache_dir, split, stop, len(source))
  if "scale_factor" not in manifest and "train" in manifest["splits"]:
    train = LatentSource(cache_dir, "train", manifest, scaled=False)
    manifest["scale_factor"] = float(1.0 / max(np.std(train.latents), 1e-8))
  _write_manifest(cache_dir, manifest)
  return manifest


class LatentSource(ImageSource):
  """One split of a latent cache as a data source: `image` is float32 latent * scale_factor
  (the pipeline passes float records through without resizing, augmenting or normalising)."""

  def __init__(self, cache_dir: str, split: str, manifest: dict | None = None,
               scaled: bool = True):
    manifest = manifest or _read_manifest(cache_dir)
    if manifest is None or split not in manifest.get("splits", {}):
      raise DataError(f"no '{split}' split in the latent cache {cache_dir}: encode it first "
                      "(train_diffusion with latent.autoencoder_run does)")
    entry = manifest["splits"][split]
    parts = {"latents": [], "labels": [], "groups": []}
    for shard in entry["shards"]:
      path = os.path.join(cache_dir, split, shard["file"])
      with open(path, "rb") as f:
        data = f.read()
      if shard.get("sha256") and hashlib.sha256(data).hexdigest() != shard["sha256"]:
        raise DataError(f"latent shard {path} does not match its sha256 in {MANIFEST}: it is "
                        f"damaged; delete {cache_dir} to encode the data again")
      arrays = files.read_npz(data)
      for key in parts:
        if key in arrays:
          parts[key].append(arrays[key])
    if sum(len(p) for p in parts["labels"]) != entry["count"]:
      raise DataError(f"the latent cache {cache_dir} has an unfinished '{split}' split: rerun the "
                      "command to finish encoding it")
    self.latents = np.concatenate(parts["latents"])
    scale = float(manifest.get("scale_factor", 1.0)) if scaled else 1.0
    self.scale_factor = scale
    groups = np.concatenate(parts["groups"]) if parts["groups"] else None
    super().__init__(np.concatenate(parts["labels"]), manifest["num_classes"],
                     tuple(manifest["latent_shape"]), groups, tuple(manifest["class_names"]),
                     tuple(manifest.get("group_names", ())))
    self.name = f"{cache_dir} ({split} latents)"

  def load_image(self, index: int) -> np.ndarray:
    return self.latents[index] * np.float32(self.scale_factor)


def first_stage(run_dir: str, run) -> tuple[Autoencoder, float] | None:
  """For a latent diffusion run (its config has `latent.autoencoder_run`): its autoencoder and
  the scale factor of its latent cache, checked to be the weights the latents came from; None
  for a pixel diffusion run."""
  latent = run.get("latent")
  if latent is None or not latent.get("autoencoder_run"):
    return None
  autoencoder = Autoencoder(latent.autoencoder_run, latent.checkpoint)
  cache = os.path.join(run_dir, CACHE_DIR)
  manifest = _read_manifest(cache)
  if manifest is None or "scale_factor" not in manifest:
    raise DataError(f"{run_dir} is a latent diffusion run without a finished latent cache "
                    f"({cache}/{MANIFEST}): finish training it first")
  if manifest["autoencoder"].get("params_sha256") != autoencoder.digest:
    raise DataError(f"the autoencoder {autoencoder.run_dir} (step {autoencoder.step}) is not the "
                    f"one {run_dir} was trained on (step {manifest['autoencoder'].get('step')}): "
                    "restore that checkpoint; decoding with other weights gives other images")
  return autoencoder, float(manifest["scale_factor"])


class DecodingSampler:
  """A latent sampler followed by the jitted decoder: (params, labels, index, key) -> images.

  Decoding runs right after each sampled batch, timed to completion: the first batch's time
  (which compiles the decoder) is `first_s`, the others add up in `decode_s` and `decoded`."""

  def __init__(self, sampler, autoencoder: Autoencoder, scale_factor: float):
    self.sampler, self.autoencoder, self.scale_factor = sampler, autoencoder, scale_factor
    self.first_s, self.decode_s, self.decoded = None, 0.0, 0

  def __call__(self, params, labels, index, key):
    z = jax.block_until_ready(self.sampler(params, labels, index, key))
    start = time.perf_counter()
    images = jax.block_until_ready(self.autoencoder.decode_fn(z / self.scale_factor))
    if self.first_s is None:
      self.first_s = time.perf_counter() - start
    else:
      self.decode_s += time.perf_counter() - start
      self.decoded += int(images.shape[0])
    return images

  def report(self) -> dict:
    """Decoding: the first (compiling) batch's seconds, then seconds, images and images/s of
    the rest (None with a single batch)."""
    return {"first_batch_s": None if self.first_s is None else round(self.first_s, 3),
            "seconds": round(self.decode_s, 3), "images": self.decoded,
            "images_per_s": self.decoded / self.decode_s if self.decode_s > 0 else None}
