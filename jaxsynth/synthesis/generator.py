"""A trained `train_diffusion` run as a generator: its resolved config, denoiser, noise schedule
and EMA parameters, and the sampler options built from config values.

Task `sample` (tasks/sample.py) and the recipes that sample inside a stage (recipes/iois.py)
load a generator through here, so neither needs the other's layer: this module sits in
synthesis/ (layer 4), below recipes/ and tasks/.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from jaxsynth import config as config_lib
from jaxsynth.data import conditions, pipeline
from jaxsynth.data.base import ImageSource
from jaxsynth.data.sources import open_source
from jaxsynth.diffusion.schedules import Schedule, make_schedule
from jaxsynth.errors import CheckpointError
from jaxsynth.models.denoisers import make_denoiser
from jaxsynth.training import train_state
from jaxsynth.training.checkpoint import Checkpointer
from jaxsynth.training.optim import make_optimizer


def extra_inputs() -> tuple[jnp.ndarray, jnp.ndarray]:
  """The (t, labels) that follow x in a denoiser's init, for a batch of one."""
  return jnp.zeros((1,), jnp.int32), jnp.zeros((1,), jnp.int32)


def denoise_fn(model: nn.Module):
  """apply_fn(params, x_t, t, labels) of the sampler: the denoiser in inference mode."""
  return lambda params, x, t, labels: model.apply({"params": params}, x, t, labels, train=False)


def sampler_options(*, sampler: str, num_steps: int, cfg_scale: float, num_classes: int,
                    prediction: str, eta: float = 0.0, spacing: str = "uniform",
                    clip_x0: float = 1.0) -> dict:
  """make_sampler's options from config values (cfg_scale 0 and clip_x0 0 mean off)."""
  return dict(sampler=sampler, num_steps=int(num_steps), eta=float(eta), spacing=spacing,
              prediction=prediction, num_classes=num_classes,
              cfg_scale=float(cfg_scale) if cfg_scale > 0 else None,
              clip_x0=float(clip_x0) if clip_x0 > 0 else None)


def load_run_config(run_dir: str, key: str = "sample.run_dir",
                    tasks: tuple[str, ...] = ("train_diffusion",)) -> ml_collections.ConfigDict:
  """The resolved config.json of the train_diffusion run (or a run of `tasks`) that config key
  `key` names."""
  return ml_collections.ConfigDict(config_lib.read_run_config(run_dir, tasks, key))


def load_ema_params(run_dir: str, run: ml_collections.ConfigDict, model, image_shape, mesh,
                    which: str, step: int | None = None, key: str = "sample.checkpoint"):
  """(EMA params, step) of checkpoint `which` (a given step, else the newest) of the run."""
  # The optimiser only shapes the abstract state; its rate schedule is not part of the state.
  tx = make_optimizer(run.train, optax.constant_schedule(0.0))
  abstract = train_state.abstract_state(model, tx, image_shape, mesh, extra_inputs())
  checkpointer = Checkpointer(run_dir, run.train.keep_checkpoints, read_only=True)
  try:
    if checkpointer.latest_step(which) is None:
      hint = (" (a best checkpoint needs diffusion.val_batches > 0 in training)"
              if which == "best" else "")
      raise CheckpointError(f"no '{which}' checkpoint in {run_dir}/checkpoints"
                            f"{hint}; train first, or set {key}=latest")
    state, meta = checkpointer.restore(abstract, which, step)
  finally:
    checkpointer.close()
  return state.ema_params, int(meta["step"])


@dataclasses.dataclass
class Generator:
  """A loaded train_diffusion run: what sampling from it needs."""
  run_dir: str
  config: ml_collections.ConfigDict   # the run's resolved config.json
  model: nn.Module                    # its denoiser (compute dtype as asked)
  params: Any                         # EMA parameters of the loaded checkpoint
  step: int                           # that checkpoint's step
  schedule: Schedule
  image_shape: tuple[int, int, int]
  conditioning: conditions.Conditioning
  train: ImageSource                  # the run's own train split


def load_generator(run_dir: str, mesh, which: str = "latest", dtype: str = "",
                   key: str = "sample.checkpoint", run_key: str = "sample.run_dir") -> Generator:
  """Loads the train_diffusion run in `run_dir` (named by config key `run_key`): config,
  denoiser and EMA params of checkpoint `which` (config key `key`)."""
  run = load_run_config(run_dir, run_key)
  train = open_source(run.data, "train", seed=run.seed)
  conditioning = conditions.from_source(run.diffusion.get("condition", "class"), train)
  image_shape = pipeline.input_shape(run.data, train)
  model_cfg = ml_collections.ConfigDict(run.model.to_dict())
  model_cfg.dtype = dtype or model_cfg.dtype   # parameters are float32 either way
  model = make_denoiser(model_cfg, conditioning.num_conditions)
  params, step = load_ema_params(run_dir, run, model, image_shape, mesh, which, key=key)
  schedule = make_schedule(run.diffusion.schedule, run.diffusion.num_timesteps)
  return Generator(os.path.abspath(run_dir), run, model, params, step, schedule,
                   tuple(image_shape), conditioning, train)


def params_digest(params) -> str:
  """SHA-256 of a parameter pytree's bytes (names which weights drew a synthetic set)."""
  digest = hashlib.sha256()
  leaves, _ = jax.tree_util.tree_flatten_with_path(params)
  for path, leaf in leaves:
    digest.update(jax.tree_util.keystr(path).encode())
    digest.update(np.asarray(jax.device_get(leaf)).tobytes())
  return digest.hexdigest()
