"""Task `train_gan` with model.name=cyclegan: a CycleGAN translating the train images of class
`cyclegan.source_class` (domain X, a majority class) into class `cyclegan.target_class` (domain Y,
a minority class), the translation baseline of DiffuPT §2.2.1.

The two domains are read as two unpaired streams of the train split (each its own shuffled
order); an epoch is ceil(max(|X|, |Y|) / batch) steps. Every `train.sample_every` steps a grid
(grids/step-N.png and TensorBoard) shows the first source images, their translations G(x) and
the cycle F(G(x)), one row each. A sweep from the run (task `sample`) translates the source
images in order (synthesis/gan_generator.py).
"""

from __future__ import annotations

import dataclasses
import logging
import os

import jax
import jax.numpy as jnp
import numpy as np

from jaxsynth import faults, files
from jaxsynth.data import augment, pipeline
from jaxsynth.data.base import ImageSource, SubsetSource
from jaxsynth.data.sources import open_source
from jaxsynth.errors import ConfigError, DataError
from jaxsynth.gan import cycle
from jaxsynth.hardware import compute_dtype
from jaxsynth.models.cyclegan import CycleGAN, make_cyclegan
from jaxsynth.training import parallel, workdir as workdir_lib
from jaxsynth.training.checkpoint import Checkpointer
from jaxsynth.training.loop import LoopSettings, StopRequest, train_loop
from jaxsynth.training.optim import make_optimizer
from jaxsynth.training.writers import MetricWriter, image_grid, png_bytes

log = logging.getLogger(__name__)

GRIDS_DIR = "grids"


@dataclasses.dataclass
class Setup:
  """The two domains, the model, mesh and run length."""
  train: ImageSource
  source: ImageSource          # domain X: the train images of source_class
  target: ImageSource          # domain Y: those of target_class
  model: CycleGAN
  mesh: jax.sharding.Mesh
  image_shape: tuple[int, int, int]
  steps_per_epoch: int
  total_steps: int


def _bad(key: str, value, fix: str) -> ConfigError:
  return ConfigError(f"config key '{key}' has bad value {value!r}: {fix}")


def check_config(config) -> None:
  """Raises ConfigError for a bad `cyclegan.*` key or normalisation."""
  c = config.cyclegan
  if c.cycle_weight < 0 or c.identity_weight < 0:
    raise _bad("cyclegan.cycle_weight", (c.cycle_weight, c.identity_weight),
               "use weights >= 0 (the paper: cycle_weight=10, identity_weight=0.5)")
  if c.source_class == c.target_class:
    raise _bad("cyclegan.target_class", c.target_class,
               "translate between two different classes: set cyclegan.source_class (a majority "
               "class) and cyclegan.target_class (the minority class to make)")
  augment.check_tanh_range(config.data)


def domain(train: ImageSource, cls: int, key: str) -> ImageSource:
  """The train images of class `cls` (config key `key`); DataError when it has none."""
  names = train.class_names
  if not 0 <= cls < len(names):
    raise _bad(key, cls, f"use a class index in [0, {len(names) - 1}] of {train.name} "
               f"({', '.join(map(str, names))})")
  indices = np.flatnonzero(train.labels == cls)
  if indices.size == 0:
    raise DataError(f"class {cls} ('{names[cls]}') has no training images in {train.name}: "
                    f"choose another {key}")
  return SubsetSource(train, indices)


def build_setup(config) -> Setup:
  """Opens both domains and builds the model and mesh."""
  check_config(config)
  train = open_source(config.data, "train", seed=config.seed)
  source = domain(train, int(config.cyclegan.source_class), "cyclegan.source_class")
  target = domain(train, int(config.cyclegan.target_class), "cyclegan.target_class")
  shape = pipeline.input_shape(config.data, train)
  model = make_cyclegan(config.model, shape, compute_dtype(config.model.dtype))
  mesh = parallel.make_mesh(config.mesh)
  batch = int(config.train.batch_size)
  parallel.check_batch_divisible(batch, mesh, "train.batch_size")
  per_epoch = max(1, -(-max(len(source), len(target)) // batch))
  total = (config.train.steps if config.train.steps > 0
           else max(1, int(round(config.train.epochs * per_epoch))))
  return Setup(train, source, target, model, mesh, shape, per_epoch, total)


def optimizers(config):
  """(generators, critics) optimisers: train.optimizer at train.learning_rate (decayed as
  train.schedule says)."""
  return make_optimizer(config.train, float(config.train.learning_rate)), make_optimizer(
      config.train, float(config.train.learning_rate))


def make_grid_fn(config, setup: Setup, workdir: str, writer: MetricWriter):
  """fn(step, state): source images, G(x) and F(G(x)), one row each."""
  n = min(8, len(setup.source))
  x = jnp.asarray(augment.normalised_images(SubsetSource(setup.source, np.arange(n)),
                                            config.data, setup.image_shape))
  model = setup.model
  translate = jax.jit(lambda p, x: model.apply({"params": p}, x, method=model.to_y))
  back = jax.jit(lambda p, y: model.apply({"params": p}, y, method=model.to_x))

  def write(step: int, state) -> None:
    y = translate(state.ema_params, x)
    grid = image_grid(np.concatenate([np.asarray(x), np.asarray(y),
                                      np.asarray(back(state.ema_params, y))]), columns=n)
    if jax.process_index() == 0:
      files.atomic_write(os.path.join(workdir, GRIDS_DIR, f"step-{step:06d}.png"),
                         png_bytes(grid))
    writer.image(step, "translations", grid)

  return write


def train_cyclegan(config, workdir: str, overwrite: bool = False,
                   stop: StopRequest | None = None) -> dict:
  """Trains the CycleGAN (resuming an unfinished run in `workdir`); writes metrics.json."""
  check_config(config)
  done = workdir_lib.finished_results(workdir, config, overwrite)
  if done is not None:
    return done
  workdir_lib.check_prepare(workdir, config, overwrite)
  setup = build_setup(config)
  workdir_lib.prepare(workdir, config, overwrite)
  log.info("CycleGAN: %d images of class %d -> %d images of class %d", len(setup.source),
           config.cyclegan.source_class, len(setup.target), config.cyclegan.target_class)
  g_tx, d_tx = optimizers(config)
  checkpointer = Checkpointer(workdir, config.train.keep_checkpoints)
  state, meta = checkpointer.resume(cycle.init_state(setup.model, setup.image_shape, g_tx, d_tx,
                                                     config.seed, setup.mesh))
  start = int(jax.device_get(state.step))
  streams = [parallel.global_batches(pipeline.train_dataset(
      domain_source, config.data, global_batch=config.train.batch_size, seed=config.seed + k,
      start_step=start, num_steps=setup.total_steps, process_index=jax.process_index(),
      process_count=jax.process_count()), setup.mesh)
      for k, domain_source in enumerate((setup.source, setup.target))]
  batches = ({"x": bx["image"], "y": by["image"]} for bx, by in zip(*streams))
  settings = cycle.CycleSettings(float(config.cyclegan.cycle_weight),
                                 float(config.cyclegan.identity_weight),
                                 float(config.train.ema_decay))
  step_fn = cycle.make_cycle_step(setup.model, settings, g_tx, d_tx, setup.mesh)
  loop = LoopSettings.from_train_config(config.train, setup.total_steps, setup.steps_per_epoch,
                                        select=False)
  writer = MetricWriter(workdir, resume_step=start)
  try:
    periodic = ()
    if config.train.sample_every > 0:
      periodic = ((config.train.sample_every, make_grid_fn(config, setup, workdir, writer)),)
    state, meta = train_loop(state, step_fn, batches, loop, checkpointer, writer, None, meta,
                             stop, periodic)
    results = {"steps": setup.total_steps, "model": "cyclegan",
               "source_class": int(config.cyclegan.source_class),
               "target_class": int(config.cyclegan.target_class),
               "source_images": len(setup.source), "target_images": len(setup.target),
               "checkpoint": {"latest": checkpointer.latest_step()}}
    if "train" in meta:
      results["train"] = {k: float(v) for k, v in meta["train"].items()}
    if jax.process_index() == 0:
      faults.point("task.before_metrics")
      workdir_lib.write_json(os.path.join(workdir, workdir_lib.METRICS_FILE), results)
  finally:
    writer.close()
    checkpointer.close()
  return results
