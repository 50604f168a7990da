"""A trained `train_gan` run as a generator: its model, the generator's EMA parameters and batch
statistics, and a jitted sampler with the sweeps' interface.

Sample i of a sweep is G(z_i, y_i) with z_i ~ N(0, I) drawn from fold_in(root_key, i), one
forward per image, so it is the same image whatever the batch size, device count or resume
point (GUIDE §2), as for the diffusion samplers. A CycleGAN run's sample i is G(x_(i mod N)):
the translation of the run's i-th source-class train image (in order, cycling when the budget
is larger than the N source images); its sweep draws the target class only.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax
import ml_collections
import numpy as np

from jaxsynth.data import pipeline
from jaxsynth.data.base import ImageSource
from jaxsynth.data.sources import open_source
from jaxsynth.data.base import SubsetSource
from jaxsynth.errors import CheckpointError, ConfigError
from jaxsynth.gan import cycle
from jaxsynth.gan.rounds import STATS, generator_latent, generator_params
from jaxsynth.gan.state import abstract_gan_state
from jaxsynth.hardware import compute_dtype
from jaxsynth.models.cyclegan import make_cyclegan
from jaxsynth.models.gan import BaganGP, make_gan
from jaxsynth.training import parallel
from jaxsynth.training.checkpoint import Checkpointer
from jaxsynth.training.optim import make_optimizer

GAN_TASK = "train_gan"


@dataclasses.dataclass
class GanGenerator:
  """A loaded train_gan run: what sampling from it needs."""
  run_dir: str
  config: ml_collections.ConfigDict   # the run's resolved config.json
  model: BaganGP
  variables: Any                      # {"params": generator EMA params, "batch_stats": ...,
  #                                     and BAGAN's "class_latents"}
  step: int                           # the loaded checkpoint's round
  image_shape: tuple[int, int, int]
  train: ImageSource                  # the run's own train split
  sampler: Any = None                 # the jitted fn(variables, labels, index, key) -> images
  provenance: dict = dataclasses.field(default_factory=dict)   # the manifest's `sampler`


def is_gan_run(run: ml_collections.ConfigDict) -> bool:
  """Whether a resolved run config is a train_gan run's."""
  return run.get("task") == GAN_TASK


def is_cyclegan_run(run: ml_collections.ConfigDict) -> bool:
  """Whether a resolved run config is a CycleGAN's (a train_gan run of configs/cyclegan.py)."""
  return is_gan_run(run) and run.model.name == "cyclegan"


def check_translation_budget(counts, run: ml_collections.ConfigDict, names, sample_cfg) -> None:
  """A CycleGAN sweep draws its target class only: ConfigError for any other class's count."""
  target = int(run.cyclegan.target_class)
  others = [c for c, n in enumerate(counts) if n and c != target]
  if others:
    key = ("sample.class_counts" if sample_cfg.budget == "counts"
           else f"sample.budget={sample_cfg.budget}")
    raise ConfigError(
        f"{key} asks for images of class {others[0]} ('{names[others[0]]}'), but the CycleGAN "
        f"run {sample_cfg.run_dir} translates class {int(run.cyclegan.source_class)} into class "
        f"{target} ('{names[target]}') only: use sample.budget=counts with a count for class "
        f"{target} alone")


def load_gan(run_dir: str, run: ml_collections.ConfigDict, mesh, which: str = "latest",
             step: int | None = None, dtype: str = "",
             key: str = "sample.checkpoint") -> GanGenerator:
  """Loads checkpoint `which` (a given step, else the newest) of the train_gan run in `run_dir`."""
  if which != "latest":
    raise CheckpointError(f"config key '{key}' = {which!r}: a train_gan run keeps only 'latest' "
                          f"checkpoints (a GAN has no validation loss to pick a best by); set "
                          f"{key}=latest")
  train = open_source(run.data, "train", seed=run.seed)
  image_shape = tuple(pipeline.input_shape(run.data, train))
  if run.model.name == "cyclegan":
    return _load_cyclegan(run_dir, run, mesh, step, dtype, train, image_shape)
  model = make_gan(run.model, len(train.class_counts()), image_shape,
                   compute_dtype(dtype or run.model.dtype))
  abstract = abstract_gan_state(model, image_shape, run.train, mesh)
  state, meta = _restore(run_dir, run, abstract, which, step)
  variables = {"params": generator_params(state.ema_params), **state.model_state}
  provenance = {"sampler": "gan", "model": run.model.name, "latent_dim": int(run.model.latent_dim)}
  return GanGenerator(os.path.abspath(run_dir), run, model, variables, int(meta["step"]),
                      image_shape, train, make_gan_sampler(model, mesh), provenance)


def _restore(run_dir: str, run, abstract, which: str, step: int | None):
  checkpointer = Checkpointer(run_dir, run.train.keep_checkpoints, read_only=True)
  try:
    if checkpointer.latest_step(which) is None:
      raise CheckpointError(f"no '{which}' checkpoint in {run_dir}/checkpoints: train the GAN "
                            "first (it saves checkpoints as it goes)")
    return checkpointer.restore(abstract, which, step)
  finally:
    checkpointer.close()


def _load_cyclegan(run_dir, run, mesh, step, dtype, train, image_shape) -> GanGenerator:
  """A CycleGAN run: G's EMA parameters and the source-class train images it translates."""
  from jaxsynth.data import augment  # pylint: disable=import-outside-toplevel
  model = make_cyclegan(run.model, image_shape, compute_dtype(dtype or run.model.dtype))
  tx = make_optimizer(run.train, 0.0)
  state, meta = _restore(run_dir, run, cycle.abstract_state(model, image_shape, tx, tx, mesh),
                         "latest", step)
  source_class = int(run.cyclegan.source_class)
  source = SubsetSource(train, np.flatnonzero(train.labels == source_class))
  images = augment.normalised_images(source, run.data, image_shape)
  variables = {"params": {"g_xy": state.ema_params["g_xy"]}, "source": images}
  provenance = {"sampler": "cyclegan", "source_class": source_class,
                "target_class": int(run.cyclegan.target_class), "source_images": len(source),
                "source_of_sample_i": "train image i mod source_images of source_class"}
  return GanGenerator(os.path.abspath(run_dir), run, model, variables, int(meta["step"]),
                      image_shape, train, make_translation_sampler(model, mesh), provenance)


def make_translation_sampler(model, mesh):
  """Jitted fn(variables, labels, global_indices, root_key) -> G(x_(i mod N)), N source images
  in variables["source"]."""

  def run(variables, labels, global_indices, root_key):
    del labels, root_key   # the target class, and no randomness: the source image decides
    source = variables["source"]
    x = source[global_indices % source.shape[0]]
    x = jax.lax.with_sharding_constraint(x, parallel.batch_sharding(mesh))
    return model.apply({"params": variables["params"]}, x, method=model.to_y)

  batch, replicated = parallel.batch_sharding(mesh), parallel.replicated(mesh)
  return jax.jit(run, in_shardings=(replicated, batch, batch, replicated), out_shardings=batch)


def make_gan_sampler(model: BaganGP, mesh):
  """Jitted fn(variables, labels, global_indices, root_key) -> normalised images in [-1, 1]."""
  latent_dim = int(model.latent_dim)

  def run(variables, labels, global_indices, root_key):
    keys = jax.vmap(lambda i: jax.random.fold_in(root_key, i))(global_indices)
    noise = jax.vmap(lambda k: jax.random.normal(k, (latent_dim,)))(keys)
    noise = jax.lax.with_sharding_constraint(noise, parallel.batch_sharding(mesh))
    z = generator_latent(noise, labels, variables)
    return model.apply({"params": variables["params"], STATS: variables[STATS]}, z, labels,
                       method=model.generate)

  batch = parallel.batch_sharding(mesh)
  replicated = parallel.replicated(mesh)
  return jax.jit(run, in_shardings=(replicated, batch, batch, replicated), out_shardings=batch)
