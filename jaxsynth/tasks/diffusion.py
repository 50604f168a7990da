"""Task `train_diffusion`: a class-conditional denoiser (UNet or DiT) with EMA, a validation loss,
and per-class sample grids from the EMA parameters every `train.sample_every` steps.

`diffusion.condition` picks what the denoiser's label is: the class (default), the sample's
group id, or its (class, group) cell (data/conditions.py has the ids); grids then have a row
per group or cell.

Latent diffusion: a config with `latent.autoencoder_run` (a finished train_autoencoder run)
encodes the train and val splits once into WORKDIR/latents (synthesis/latents.py: resumable,
scaled by 1/std of the train latents) and trains the denoiser on those latents; the grids are
decoded by the autoencoder."""

from __future__ import annotations

import dataclasses
import logging
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxsynth import faults, files
from jaxsynth.data import augment, conditions, pipeline
from jaxsynth.data.base import ImageSource
from jaxsynth.data.sources import open_source
from jaxsynth.diffusion.losses import WEIGHTINGS, diffusion_loss, per_sample_loss
from jaxsynth.diffusion.samplers import SAMPLERS, make_sampler
from jaxsynth.diffusion.schedules import PREDICTIONS, SCHEDULES, Schedule, make_schedule
from jaxsynth.errors import ConfigError
from jaxsynth.models.denoisers import make_denoiser
# The generator's parts live in synthesis/ so that recipes can load a trained run too.
from jaxsynth.synthesis.generator import denoise_fn, extra_inputs, sampler_options  # noqa: F401
from jaxsynth.synthesis import latents, model_card
from jaxsynth.training import parallel, train_state, workdir as workdir_lib
from jaxsynth.training.checkpoint import Checkpointer
from jaxsynth.training.loop import LoopSettings, StopRequest, train_loop
from jaxsynth.training.optim import learning_rate_schedule, make_optimizer
from jaxsynth.training.writers import MetricWriter, image_grid, png_bytes

log = logging.getLogger(__name__)

GRIDS_DIR = "grids"
VAL_STREAM = 1      # fold_in tag of the validation-loss keys (the root key is the config seed's)
GRID_STREAM = 2     # fold_in tag of the preview grids' root key


@dataclasses.dataclass
class Setup:
  """What the diffusion tasks derive from the config: data, denoiser, schedule, mesh, lengths."""
  train: ImageSource          # labelled with condition ids (the classes for condition=class)
  model: nn.Module
  schedule: Schedule
  mesh: jax.sharding.Mesh
  image_shape: tuple[int, int, int]
  num_classes: int            # condition ids the denoiser embeds (classes, groups or cells)
  steps_per_epoch: int
  total_steps: int
  conditioning: conditions.Conditioning = conditions.Conditioning()
  data_cfg: object = None     # the data keys the pipelines read (a latent view for LDMs)
  autoencoder: latents.Autoencoder | None = None   # latent diffusion: the first stage
  cache_dir: str = ""         # latent diffusion: the latent cache (set once it is built)
  scale_factor: float = 1.0   # latent diffusion: latents are multiplied by this

  def open_split(self, config, split: str) -> ImageSource:
    """A split of the data (of the latent cache for latent diffusion) labelled with condition
    ids."""
    data = (latents.LatentSource(self.cache_dir, split) if self.cache_dir
            else open_source(config.data, split, seed=config.seed))
    return conditions.conditioned(data, self.conditioning)

  def to_images(self, x):
    """Denoiser-space samples -> normalised images (decoded for latent diffusion)."""
    if self.autoencoder is None:
      return x
    return self.autoencoder.decode_fn(x / self.scale_factor)

  def image_normalisation(self, config):
    """(mean, std) of the images `to_images` returns."""
    data = self.autoencoder.config.data if self.autoencoder else config.data
    return augment.normalisation(data)


def _bad(key: str, value, fix: str) -> ConfigError:
  return ConfigError(f"config key '{key}' has bad value {value!r}: {fix}")


def check_config(config) -> None:
  """Raises ConfigError for a bad `diffusion.*` or `train.sample_every` key."""
  d = config.diffusion
  for key, value, options in (("condition", d.get("condition", "class"), conditions.CONDITIONS),
                              ("schedule", d.schedule, SCHEDULES),
                              ("prediction", d.prediction, PREDICTIONS),
                              ("weighting", d.weighting, WEIGHTINGS),
                              ("sampler", d.sampler, SAMPLERS)):
    if value not in options:
      raise _bad(f"diffusion.{key}", value, f"use one of {', '.join(options)}")
  if d.num_timesteps < 2:
    raise _bad("diffusion.num_timesteps", d.num_timesteps, "use T >= 2 (e.g. 1000)")
  if not 0.0 <= d.label_dropout <= 1.0:
    raise _bad("diffusion.label_dropout", d.label_dropout, "use a probability in [0, 1]")
  if d.cfg_scale < 0:
    raise _bad("diffusion.cfg_scale", d.cfg_scale, "use w >= 0 (0 = no guidance)")
  if d.cfg_scale > 0 and d.label_dropout == 0:
    raise _bad("diffusion.cfg_scale", d.cfg_scale, "classifier-free guidance needs a trained "
               "null label: set diffusion.label_dropout > 0 (e.g. 0.1) or cfg_scale=0")
  for key in ("sample_steps", "grid_per_class"):
    if d[key] < 1:
      raise _bad(f"diffusion.{key}", d[key], "use a positive integer")
  if d.val_batches < 0:
    raise _bad("diffusion.val_batches", d.val_batches, "use 0 (off) or a number of batches")
  if config.train.sample_every < 0:
    raise _bad("train.sample_every", config.train.sample_every, "use 0 (off) or a step count")


def build_setup(config) -> Setup:
  """Opens the train split and builds the denoiser, noise schedule and mesh from the config."""
  check_config(config)
  latent = config.get("latent")
  autoencoder = None
  if latent is not None and latent.autoencoder_run:
    autoencoder = latents.Autoencoder(latent.autoencoder_run, latent.checkpoint)
  data = open_source(config.data, "train", seed=config.seed)
  conditioning = conditions.from_source(config.diffusion.get("condition", "class"), data)
  train = conditions.conditioned(data, conditioning)
  mesh = parallel.make_mesh(config.mesh)
  parallel.check_batch_divisible(config.train.batch_size, mesh, "train.batch_size")
  steps_per_epoch = max(1, -(-len(train) // config.train.batch_size))
  total = (config.train.steps if config.train.steps > 0
           else max(1, int(round(config.train.epochs * steps_per_epoch))))
  model = make_denoiser(config.model, train.num_classes)
  schedule = make_schedule(config.diffusion.schedule, config.diffusion.num_timesteps)
  shape = autoencoder.latent_shape if autoencoder else pipeline.input_shape(config.data, train)
  data_cfg = config.data
  if autoencoder is not None:
    data_cfg = latents.latent_data_config(config.data)
  return Setup(train, model, schedule, mesh, shape, train.num_classes, steps_per_epoch, total,
               conditioning, data_cfg, autoencoder)


def use_latent_cache(config, setup: Setup, workdir: str) -> None:
  """Latent diffusion: encodes (or resumes, or checks) WORKDIR/latents and points the setup's
  train split, shape and scale at it."""
  cache = os.path.join(workdir, latents.CACHE_DIR)
  manifest = latents.build_cache(cache, setup.autoencoder, config.data, config.seed,
                                 batch_size=config.train.eval_batch_size)
  setup.cache_dir, setup.scale_factor = cache, float(manifest["scale_factor"])
  setup.train = setup.open_split(config, "train")
  log.info("latent diffusion on %s: latents %s, scale factor %.4f", cache,
           tuple(manifest["latent_shape"]), setup.scale_factor)


def make_tx(config, setup: Setup):
  """The learning-rate schedule and optimiser of `config.train` for this run's length."""
  schedule = learning_rate_schedule(config.train, setup.steps_per_epoch, setup.total_steps)
  return schedule, make_optimizer(config.train, schedule)


def loss_options(config, num_classes: int) -> dict:
  """Keyword arguments of diffusion_loss from `config.diffusion`."""
  d = config.diffusion
  return dict(prediction=d.prediction, weighting=d.weighting, snr_gamma=float(d.snr_gamma),
              label_dropout=float(d.label_dropout), num_classes=num_classes)


def make_train_step(model: nn.Module, tx, schedule: Schedule, options: dict, lr_schedule,
                    ema_decay: float, mesh):
  """The jitted, donated step: (state, batch) -> (state, metrics) on a batch-sharded batch."""

  def step(state: train_state.TrainState, batch):
    images = jax.lax.with_sharding_constraint(batch["image"], parallel.batch_sharding(mesh))
    loss_key, dropout_key = jax.random.split(jax.random.fold_in(state.rng, state.step))

    def apply(params, x, t, labels):
      return model.apply({"params": params}, x, t, labels, train=True,
                         rngs={"dropout": dropout_key})

    loss, grads = jax.value_and_grad(lambda p: diffusion_loss(
        apply, p, images, batch["label"], loss_key, schedule, **options))(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    grad_norm = optax.tree.norm(grads)
    new_state = state.replace(
        step=state.step + 1, params=params, opt_state=opt_state,
        ema_params=train_state.ema_update(state.ema_params, params, ema_decay, state.step))
    metrics = {"loss": loss, "grad_norm": grad_norm, "learning_rate": lr_schedule(state.step),
               "finite": jnp.isfinite(loss) & jnp.isfinite(grad_norm)}
    return new_state, metrics

  replicated = parallel.replicated(mesh)
  return jax.jit(step, in_shardings=(replicated, parallel.batch_sharding(mesh)),
                 out_shardings=(replicated, replicated), donate_argnums=0)


def make_val_loss(config, setup: Setup, options: dict):
  """evaluate_fn(state) -> {"loss"}: EMA-params loss on the first val batches, fixed keys."""
  val = setup.open_split(config, "val")
  options = dict(options, label_dropout=0.0)
  batch_sharding, replicated = parallel.batch_sharding(setup.mesh), parallel.replicated(setup.mesh)
  apply = denoise_fn(setup.model)

  def batch_loss(params, images, labels, mask, key):
    losses = per_sample_loss(apply, params, images, labels, key, setup.schedule, **options)
    return jnp.sum(losses * mask), jnp.sum(mask)

  batch_loss = jax.jit(batch_loss, in_shardings=(replicated,) + (batch_sharding,) * 3 +
                       (replicated,), out_shardings=replicated)
  root = jax.random.fold_in(jax.random.PRNGKey(config.seed), VAL_STREAM)
  limit = config.diffusion.val_batches

  def evaluate(state) -> dict:
    # The same samples, timesteps and noise at every evaluation, so values are comparable.
    total, count = 0.0, 0.0
    batches = pipeline.eval_dataset(val, setup.data_cfg, global_batch=config.train.eval_batch_size,
                                    process_index=jax.process_index(),
                                    process_count=jax.process_count())
    for b, batch in enumerate(batches):
      if b == limit:
        break
      batch = parallel.to_global(batch, batch_sharding)
      s, n = batch_loss(state.ema_params, batch["image"], batch["label"], batch["mask"],
                        jax.random.fold_in(root, b))
      total, count = total + float(s), count + float(n)
    return {"loss": total / max(count, 1.0)}

  return evaluate


def make_grid_fn(config, setup: Setup, workdir: str, writer: MetricWriter):
  """fn(step, state): samples `grid_per_class` images of each class (group, cell) from the EMA
  params and writes them as one grid (a row each) to grids/step-NNNNNN.png and TensorBoard."""
  d = config.diffusion
  per_class = int(d.grid_per_class)
  n = setup.num_classes * per_class
  padded = -(-n // setup.mesh.devices.size) * setup.mesh.devices.size
  labels = np.repeat(np.arange(setup.num_classes), per_class)
  labels = np.concatenate([labels, np.zeros(padded - n, labels.dtype)]).astype(np.int32)
  indices = np.arange(padded, dtype=np.int32)
  sampler = make_sampler(
      denoise_fn(setup.model), setup.schedule, setup.image_shape, mesh=setup.mesh,
      **sampler_options(sampler=d.sampler, num_steps=d.sample_steps, cfg_scale=d.cfg_scale,
                        num_classes=setup.num_classes, prediction=d.prediction))
  # One fixed root key: every grid shows the same noise, so grids over training compare.
  root = jax.random.fold_in(jax.random.PRNGKey(config.seed), GRID_STREAM)
  mean, std = setup.image_normalisation(config)

  def write(step: int, state) -> None:
    samples = sampler(state.ema_params, labels, indices, root)
    images = parallel.to_host(setup.to_images(samples))[:n]
    grid = image_grid(images, columns=per_class, mean=mean, std=std)
    if jax.process_index() == 0:
      path = os.path.join(workdir, GRIDS_DIR, f"step-{step:06d}.png")
      files.atomic_write(path, png_bytes(grid))
    writer.image(step, "samples/per_class", grid)

  return write


def write_card_grid(config, setup: Setup, workdir: str, writer: MetricWriter, state) -> str:
  """The model card's sample grid of the final EMA params (grids/step-N.png, written unless the
  periodic grids already drew that step); its path relative to the run directory."""
  step = int(jax.device_get(state.step))
  name = os.path.join(GRIDS_DIR, f"step-{step:06d}.png")
  if not os.path.isfile(os.path.join(workdir, name)):
    make_grid_fn(config, setup, workdir, writer)(step, state)
  return name


def train_diffusion(config, workdir: str, overwrite: bool = False,
                    stop: StopRequest | None = None) -> dict:
  """Trains the denoiser (resuming an unfinished run in `workdir`); writes metrics.json."""
  check_config(config)
  done = workdir_lib.finished_results(workdir, config, overwrite)
  if done is not None:
    return done
  # The data (and its groups, for condition != class) is checked before anything is written.
  workdir_lib.check_prepare(workdir, config, overwrite)
  setup = build_setup(config)
  workdir_lib.prepare(workdir, config, overwrite)
  if setup.autoencoder is not None:
    use_latent_cache(config, setup, workdir)
  log.info("train split of %s: %d samples, %s counts %s", setup.train.name, len(setup.train),
           setup.conditioning.mode, setup.train.class_counts().tolist())
  lr_schedule, tx = make_tx(config, setup)
  state = train_state.init_state(setup.model, tx, setup.image_shape, config.seed, setup.mesh,
                                 extra_inputs())
  checkpointer = Checkpointer(workdir, config.train.keep_checkpoints)
  state, meta = checkpointer.resume(state)
  start = int(jax.device_get(state.step))

  options = loss_options(config, setup.num_classes)
  step_fn = make_train_step(setup.model, tx, setup.schedule, options, lr_schedule,
                            config.train.ema_decay, setup.mesh)
  evaluate_fn = (make_val_loss(config, setup, options) if config.diffusion.val_batches > 0
                 else None)
  dataset = pipeline.train_dataset(
      setup.train, setup.data_cfg, global_batch=config.train.batch_size, seed=config.seed,
      start_step=start, num_steps=setup.total_steps, process_index=jax.process_index(),
      process_count=jax.process_count())
  settings = LoopSettings.from_train_config(config.train, setup.total_steps, setup.steps_per_epoch,
                                           select=evaluate_fn is not None)
  writer = MetricWriter(workdir, resume_step=start)
  try:
    periodic = ()
    if config.train.sample_every > 0:
      periodic = ((config.train.sample_every, make_grid_fn(config, setup, workdir, writer)),)
    batches = parallel.global_batches(dataset, setup.mesh)
    state, meta = train_loop(state, step_fn, batches, settings, checkpointer, writer,
                             evaluate_fn, meta, stop, periodic)
    results = {"steps": setup.total_steps, "checkpoint": {"latest": checkpointer.latest_step()}}
    if "train" in meta:  # the last logged window's mean (kept with the checkpoint)
      results["train"] = {"loss": float(meta["train"]["loss"])}
    if evaluate_fn is not None:
      results["val"] = evaluate_fn(state)
      results["checkpoint"].update(best=meta.get("best_step"), best_loss=meta.get("best_value"))
    grid = write_card_grid(config, setup, workdir, writer, state)
    if jax.process_index() == 0:
      model_card.write(workdir, model_card.build(config, setup.train, setup.conditioning,
                                                 setup.image_shape, results, grid))
      faults.point("task.before_metrics")
      workdir_lib.write_json(os.path.join(workdir, workdir_lib.METRICS_FILE), results)
  finally:
    writer.close()
    checkpointer.close()
  log.info("diffusion training finished: %s", results)
  return results
