"""A trained `train_gan` run as a generator: its model, the generator's EMA parameters and batch
statistics, and a jitted sampler with the sweeps' interface.

Sample i of a sweep is G(z_i, y_i) with z_i ~ N(0, I) drawn from fold_in(root_key, i), one
forward per image, so it is the same image whatever the batch size, device count or resume
point (GUIDE §2), as for the diffusion samplers.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax
import ml_collections

from jaxsynth.data import pipeline
from jaxsynth.data.base import ImageSource
from jaxsynth.data.sources import open_source
from jaxsynth.errors import CheckpointError
from jaxsynth.gan.rounds import STATS, generator_latent, generator_params
from jaxsynth.gan.state import abstract_gan_state
from jaxsynth.hardware import compute_dtype
from jaxsynth.models.gan import BaganGP, make_gan
from jaxsynth.training import parallel
from jaxsynth.training.checkpoint import Checkpointer

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


def is_gan_run(run: ml_collections.ConfigDict) -> bool:
  """Whether a resolved run config is a train_gan run's."""
  return run.get("task") == GAN_TASK


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
  model = make_gan(run.model, len(train.class_counts()), image_shape,
                   compute_dtype(dtype or run.model.dtype))
  abstract = abstract_gan_state(model, image_shape, run.train, mesh)
  checkpointer = Checkpointer(run_dir, run.train.keep_checkpoints, read_only=True)
  try:
    if checkpointer.latest_step(which) is None:
      raise CheckpointError(f"no '{which}' checkpoint in {run_dir}/checkpoints: train the GAN "
                            "first (its rounds save checkpoints)")
    state, meta = checkpointer.restore(abstract, which, step)
  finally:
    checkpointer.close()
  variables = {"params": generator_params(state.ema_params), **state.model_state}
  return GanGenerator(os.path.abspath(run_dir), run, model, variables, int(meta["step"]),
                      image_shape, train)


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
