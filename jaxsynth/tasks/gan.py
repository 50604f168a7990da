"""Task `train_gan`: BAGAN-GP (Huang & Jafari 2021) and its conditional-GAN relatives.

Two stages in one workdir, each resumable by rerunning the command:

1. `gan.init=autoencoder` (BAGAN-GP): the supervised autoencoder of Fig. 3 (encoder -> latent
   multiplied by a label embedding -> decoder, L1 reconstruction) trains in WORKDIR/autoencoder
   for `gan.autoencoder_epochs`; the generator (embedding + decoder) starts from it, and with
   `gan.critic_init=encoder` (the paper's Fig. 5) the critic's convolution trunk starts from
   the encoder's (`independent`: from scratch, the authors' code's default).
2. Rounds (gan/rounds.py): `gan.critic_steps` critic updates then one generator update, one
   jitted program per round, checkpointed every `train.checkpoint_every` rounds. An epoch is
   ceil(N / train.batch_size) rounds (one round per real batch, as the authors' Keras `fit`);
   each critic update draws its own real batch (WGAN-GP's Algorithm 1).

Every `train.sample_every` rounds a grid is written (grids/step-N.png and TensorBoard) laid out
as the paper's eq. 16: row 0 holds a real train image of each class, row r > 0 column c holds
G(z_{r-1}, c) for fixed noise vectors z.
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
from jaxsynth.gan import losses, rounds, state as gan_state_lib
from jaxsynth.hardware import compute_dtype
from jaxsynth.metrics import plots
from jaxsynth.models.gan import BaganGP, make_gan
from jaxsynth.synthesis.sweep import to_uint8
from jaxsynth.training import parallel, workdir as workdir_lib
from jaxsynth.training.checkpoint import Checkpointer
from jaxsynth.training.loop import LoopSettings, StopRequest, train_loop
from jaxsynth.training.optim import make_optimizer
from jaxsynth.training.writers import MetricWriter, image_grid, png_bytes

log = logging.getLogger(__name__)

AUTOENCODER_DIR = "autoencoder"
GRIDS_DIR = "grids"
INITS = ("autoencoder", "none")
CRITIC_INITS = ("encoder", "independent")
FAKE_LABELS = ("uniform", "real")
GRID_STREAM = 2        # fold_in tag of the grids' fixed noise (the root key is the seed's)


@dataclasses.dataclass
class Setup:
  """What the task derives from the config: data, model, mesh and both stages' lengths."""
  train: ImageSource
  model: BaganGP
  mesh: jax.sharding.Mesh
  image_shape: tuple[int, int, int]
  num_classes: int
  rounds_per_epoch: int
  total_rounds: int
  autoencoder_steps: int            # 0 without autoencoder initialisation
  settings: rounds.RoundSettings


def _bad(key: str, value, fix: str) -> ConfigError:
  return ConfigError(f"config key '{key}' has bad value {value!r}: {fix}")


def check_config(config) -> None:
  """Raises ConfigError for a bad `gan.*` key or a data normalisation the tanh cannot reach."""
  g = config.gan
  choices = (("adversarial", losses.ADVERSARIAL), ("fake_labels", FAKE_LABELS),
             ("init", INITS), ("critic_init", CRITIC_INITS), ("gp_alpha", losses.ALPHAS))
  for key, allowed in choices:
    if g[key] not in allowed:
      raise _bad(f"gan.{key}", g[key], f"use one of {', '.join(allowed)}")
  if g.wrong_label_term and g.adversarial != "logistic":
    raise _bad("gan.wrong_label_term", g.wrong_label_term,
               "the wrong-label term is part of the logistic loss (eq. 14): set it False or "
               "use gan.adversarial=logistic")
  bagan = config.model.name == "bagan"
  if bagan != (g.adversarial == "classifier"):
    raise _bad("gan.adversarial", g.adversarial,
               "BAGAN (model.name=bagan) and only it has the K + 1 way classifier critic: use "
               "adversarial=classifier with model.name=bagan (configs/bagan_gp.py:bagan), "
               "logistic or wasserstein otherwise")
  if bagan and (g.init != "autoencoder" or g.gp_weight or g.fake_labels != "uniform"):
    raise _bad("gan.init", g.init, "BAGAN needs gan.init=autoencoder (its class Gaussians come "
               "from the autoencoder's latents), gan.gp_weight=0 (a softmax critic has no "
               "Lipschitz penalty) and gan.fake_labels=uniform; see configs/bagan_gp.py:bagan")
  if g.autoencoder_loss not in ("l1", "l2"):
    raise _bad("gan.autoencoder_loss", g.autoencoder_loss, "use l1 (BAGAN-GP) or l2 (BAGAN)")
  if g.critic_steps < 1:
    raise _bad("gan.critic_steps", g.critic_steps, "use at least 1 (the paper: 5)")
  if g.gp_weight < 0:
    raise _bad("gan.gp_weight", g.gp_weight, "use a weight >= 0 (the paper: 10)")
  if g.init == "autoencoder" and g.autoencoder_steps <= 0 and g.autoencoder_epochs <= 0:
    raise _bad("gan.autoencoder_epochs", g.autoencoder_epochs,
               "the autoencoder initialisation needs gan.autoencoder_epochs > 0 or "
               "gan.autoencoder_steps > 0; or set gan.init=none")
  if g.grid_rows < 0:
    raise _bad("gan.grid_rows", g.grid_rows, "use 0 (no grids) or a number of noise rows")
  augment.check_tanh_range(config.data)


def build_setup(config) -> Setup:
  """Opens the train split, checks that every class has images, builds the model and mesh."""
  check_config(config)
  train = open_source(config.data, "train", seed=config.seed)
  counts = train.class_counts()
  num_classes = len(counts)
  if num_classes < 2:
    raise DataError(f"{train.name} has {num_classes} class: a class-conditional GAN needs at "
                    "least 2; check data.path and data.num_classes")
  if not counts.all():
    c = int(np.flatnonzero(counts == 0)[0])
    raise DataError(
        f"class {c} ('{train.class_names[c]}') has no training images in {train.name}: "
        f"{config.model.name} draws fake labels over every class and cannot learn one it never "
        "sees; add images of it, or set data.num_classes to the classes the data has")
  shape = pipeline.input_shape(config.data, train)
  model = make_gan(config.model, num_classes, shape, compute_dtype(config.model.dtype))
  mesh = parallel.make_mesh(config.mesh)
  batch = int(config.train.batch_size)
  parallel.check_batch_divisible(batch, mesh, "train.batch_size")
  per_epoch = max(1, -(-len(train) // batch))
  total = (config.train.steps if config.train.steps > 0
           else max(1, int(round(config.train.epochs * per_epoch))))
  g = config.gan
  ae_steps = 0
  if g.init == "autoencoder":
    ae_steps = (g.autoencoder_steps if g.autoencoder_steps > 0
                else max(1, int(round(g.autoencoder_epochs * per_epoch))))
  settings = rounds.RoundSettings(
      batch_size=batch, num_classes=num_classes, latent_dim=int(config.model.latent_dim),
      critic_steps=int(g.critic_steps), adversarial=g.adversarial,
      wrong_label_term=bool(g.wrong_label_term), fake_labels=g.fake_labels,
      gp_weight=float(g.gp_weight), gp_alpha=g.gp_alpha, ema_decay=float(config.train.ema_decay),
      autoencoder_loss=g.autoencoder_loss)
  return Setup(train, model, mesh, shape, num_classes, per_epoch, total, ae_steps, settings)


def autoencoder_stage(config, setup: Setup, workdir: str, variables: dict,
                      stop: StopRequest | None) -> dict:
  """Trains (or resumes, or reads back) the supervised autoencoder in WORKDIR/autoencoder;
  returns `variables` with its encoder, embedding, decoder and batch statistics."""
  directory = os.path.join(workdir, AUTOENCODER_DIR)
  os.makedirs(directory, exist_ok=True)
  tx = make_optimizer(config.train, float(config.train.learning_rate))
  state = gan_state_lib.autoencoder_state(variables, tx, config.seed, setup.mesh)
  checkpointer = Checkpointer(directory, config.train.keep_checkpoints)
  writer = None
  try:
    state, meta = checkpointer.resume(state)
    start = int(jax.device_get(state.step))
    if start < setup.autoencoder_steps:
      log.info("autoencoder stage: steps %d to %d", start, setup.autoencoder_steps)
      writer = MetricWriter(directory, resume_step=start)
      dataset = pipeline.train_dataset(
          setup.train, config.data, global_batch=config.train.batch_size,
          seed=config.seed + 1, start_step=start, num_steps=setup.autoencoder_steps,
          process_index=jax.process_index(), process_count=jax.process_count())
      every = max(1, setup.autoencoder_steps // 4)
      settings = LoopSettings(total_steps=setup.autoencoder_steps,
                              log_every=config.train.log_every, eval_every=every,
                              checkpoint_every=config.train.checkpoint_every or every)
      step = rounds.make_autoencoder_step(setup.model, tx, setup.mesh,
                                          loss=setup.settings.autoencoder_loss)
      state, meta = train_loop(state, step, parallel.global_batches(dataset, setup.mesh),
                               settings, checkpointer, writer, None, meta, stop)
    metrics = os.path.join(directory, workdir_lib.METRICS_FILE)
    if jax.process_index() == 0 and not os.path.exists(metrics):   # also after a kill just
      workdir_lib.write_json(metrics, {                             # before it was written
          "steps": setup.autoencoder_steps,
          "train": {k: float(v) for k, v in meta.get("train", {}).items()}})
  finally:
    if writer is not None:
      writer.close()
    checkpointer.close()
  trained = jax.device_get(state)
  if jax.process_index() == 0:
    write_autoencoder_figures(config, setup, directory, trained)
  params = dict(variables["params"], **trained.params)
  if config.gan.critic_init == "encoder":
    # BAGAN-GP's critic takes the encoder's trunk (Fig. 5); BAGAN's the whole encoder (Fig. 3b).
    parts = ("trunk", "latent") if setup.model.conditioning == "gaussian" else ("trunk",)
    params["critic"] = dict(params["critic"], **{k: params["encoder"][k] for k in parts})
  out = dict(variables, params=params)
  out[rounds.STATS] = trained.model_state[rounds.STATS]
  if setup.model.conditioning == "gaussian":
    out[rounds.CLASS_LATENTS] = class_gaussians(config, setup, params["encoder"])
  return out


def _over_train(config, setup: Setup, fn) -> tuple[np.ndarray, np.ndarray]:
  """(fn(images, labels) stacked, labels) over the whole train split, in order."""
  outputs, labels = [], []
  for batch in pipeline.eval_dataset(setup.train, config.data,
                                     global_batch=config.train.batch_size):
    keep = np.asarray(batch["mask"]) > 0
    y = jnp.asarray(batch["label"])
    outputs.append(np.asarray(fn(jnp.asarray(batch["image"]), y))[keep])
    labels.append(np.asarray(y)[keep])
  return np.concatenate(outputs), np.concatenate(labels)


def encode_train(config, setup: Setup, encoder_params) -> tuple[np.ndarray, np.ndarray]:
  """(latents (N, d), labels (N,)) of the whole train split under the encoder."""
  model = setup.model
  encode = jax.jit(lambda p, x: model.apply({"params": {"encoder": p}}, x, method=model.encode))
  return _over_train(config, setup, lambda x, y: encode(encoder_params, x))


RECONSTRUCTIONS = "reconstructions.npz"   # the autoencoder baseline of docs/results/gans.md
LATENT_PLOT = "latents.png"


def write_autoencoder_figures(config, setup: Setup, directory: str, state) -> None:
  """Once per run, from the trained autoencoder: WORKDIR/autoencoder/reconstructions.npz (the
  train split's reconstructions, `train_images` uint8 and `train_labels`: the paper's
  autoencoder baseline for FID) and latents.png (the train split's labelled latents, z *
  embedding(y) for BAGAN-GP or z for BAGAN, on their two principal axes: the paper's Fig. 10
  with PCA for t-SNE)."""
  recon_path = os.path.join(directory, RECONSTRUCTIONS)
  plot_path = os.path.join(directory, LATENT_PLOT)
  if os.path.exists(recon_path) and os.path.exists(plot_path):
    return
  model, variables = setup.model, {"params": state.params, **state.model_state}
  reconstruct = jax.jit(lambda x, y: model.apply(variables, x, y, method=model.reconstruct))
  labelled = jax.jit(lambda x, y: model.apply(
      variables, model.apply(variables, x, method=model.encode), y, method=model.labelled))
  mean, std = augment.normalisation(config.data, setup.image_shape[-1])
  images, labels = _over_train(config, setup, reconstruct)
  workdir_lib.write_npz(recon_path, train_images=to_uint8(images, mean, std),
                        train_labels=labels.astype(np.int64),
                        class_names=np.asarray(setup.train.class_names))
  latents, labels = _over_train(config, setup, labelled)
  title = ("labelled latents z * embedding(y)" if model.conditioning == "embedding"
           else "latents z") + f" of the train split, PCA ({len(labels)} images)"
  plots.write_png(plot_path, plots.scatter(plots.pca_2d(latents), labels,
                                           setup.train.class_names, title))


def class_gaussians(config, setup: Setup, encoder_params) -> dict:
  """BAGAN's class-conditional latent generator (Mariani et al. 2018 §4): each class's mean
  and covariance of its train images' latents, the covariance kept as a symmetric square root
  S (S S^T = Sigma; eigenvalues clipped at 0, so a class with fewer images than latent
  dimensions, whose covariance is singular, still draws)."""
  latents, labels = encode_train(config, setup, encoder_params)
  d = latents.shape[1]
  means = np.zeros((setup.num_classes, d), np.float32)
  scales = np.zeros((setup.num_classes, d, d), np.float32)
  for c in range(setup.num_classes):
    z = latents[labels == c].astype(np.float64)
    means[c] = z.mean(axis=0)
    if len(z) > 1:
      values, vectors = np.linalg.eigh(np.cov(z, rowvar=False))
      scales[c] = (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T
  return {"mean": means, "scale": scales}


def grid_images(config, setup: Setup) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(a real train image per class, fixed noise (rows, latent), labels per noise row)."""
  labels = setup.train.labels
  firsts = [int(np.flatnonzero(labels == c)[0]) for c in range(setup.num_classes)]
  reals = augment.normalised_images(SubsetSource(setup.train, np.asarray(firsts)), config.data,
                                    setup.image_shape)
  noise = jax.random.normal(jax.random.fold_in(jax.random.PRNGKey(config.seed), GRID_STREAM),
                            (int(config.gan.grid_rows), setup.settings.latent_dim))
  return reals, np.asarray(noise), np.arange(setup.num_classes)


def make_grid_fn(config, setup: Setup, workdir: str, writer: MetricWriter):
  """fn(step, state): the eq. 16 grid of the current generator, to PNG and TensorBoard."""
  reals, noise, classes = grid_images(config, setup)
  generate = rounds.make_generate(setup.model)
  rows, k = noise.shape[0], len(classes)
  z = jnp.asarray(np.repeat(noise, k, axis=0))
  y = jnp.asarray(np.tile(classes, rows), jnp.int32)

  def write(step: int, state) -> None:
    fakes = np.asarray(generate(state.params, state.model_state, z, y))
    grid = image_grid(np.concatenate([reals, fakes]), columns=k)
    if jax.process_index() == 0:
      files.atomic_write(os.path.join(workdir, GRIDS_DIR, f"step-{step:06d}.png"),
                         png_bytes(grid))
    writer.image(step, "samples", grid)

  return write


def is_cyclegan(config) -> bool:
  """Whether a train_gan config is a CycleGAN's (configs/cyclegan.py; tasks/cyclegan.py)."""
  return config.model.name == "cyclegan"


def check_setup(config) -> None:
  """What main checks before a train_gan run writes anything: the config, data and model."""
  if is_cyclegan(config):
    from jaxsynth.tasks import cyclegan  # pylint: disable=import-outside-toplevel
    cyclegan.build_setup(config)
  else:
    build_setup(config)


def train_gan(config, workdir: str, overwrite: bool = False,
              stop: StopRequest | None = None) -> dict:
  """Trains the GAN (resuming an unfinished run in `workdir`); writes metrics.json."""
  if is_cyclegan(config):
    from jaxsynth.tasks import cyclegan  # pylint: disable=import-outside-toplevel
    return cyclegan.train_cyclegan(config, workdir, overwrite, stop)
  check_config(config)
  done = workdir_lib.finished_results(workdir, config, overwrite)
  if done is not None:
    return done
  workdir_lib.check_prepare(workdir, config, overwrite)
  setup = build_setup(config)
  workdir_lib.prepare(workdir, config, overwrite)
  log.info("train split of %s: %d images of %s, classes %s", setup.train.name, len(setup.train),
           setup.image_shape, setup.train.class_counts().tolist())
  g_tx, c_tx = gan_state_lib.optimizers(config.train)
  variables = gan_state_lib.init_variables(setup.model, setup.image_shape, config.seed)
  checkpointer = Checkpointer(workdir, config.train.keep_checkpoints)
  writer = None
  try:
    if setup.autoencoder_steps and checkpointer.latest_step() is None:
      variables = autoencoder_stage(config, setup, workdir, variables, stop)
    state, meta = checkpointer.resume(
        gan_state_lib.gan_state(variables, g_tx, c_tx, config.seed, setup.mesh))
    start = int(jax.device_get(state.step))
    dataset = pipeline.train_dataset(
        setup.train, config.data, global_batch=setup.settings.critic_steps * setup.settings.batch_size,
        seed=config.seed, start_step=start, num_steps=setup.total_rounds,
        process_index=jax.process_index(), process_count=jax.process_count())
    settings = LoopSettings.from_train_config(config.train, setup.total_rounds,
                                              setup.rounds_per_epoch, select=False)
    writer = MetricWriter(workdir, resume_step=start)
    periodic = ()
    if config.train.sample_every > 0 and config.gan.grid_rows > 0:
      periodic = ((config.train.sample_every, make_grid_fn(config, setup, workdir, writer)),)
    round_fn = rounds.make_round(setup.model, setup.settings, g_tx, c_tx, setup.mesh)
    state, meta = train_loop(state, round_fn, parallel.global_batches(dataset, setup.mesh),
                             settings, checkpointer, writer, None, meta, stop, periodic)
    results = {"rounds": setup.total_rounds, "model": config.model.name,
               "critic_steps": setup.settings.critic_steps,
               "autoencoder_steps": setup.autoencoder_steps,
               "class_counts": setup.train.class_counts().tolist(),
               "checkpoint": {"latest": checkpointer.latest_step()}}
    if "train" in meta:
      results["train"] = {k: float(v) for k, v in meta["train"].items()}
    if jax.process_index() == 0:
      faults.point("task.before_metrics")
      workdir_lib.write_json(os.path.join(workdir, workdir_lib.METRICS_FILE), results)
  finally:
    if writer is not None:
      writer.close()
    checkpointer.close()
  log.info("GAN training finished: %s", results)
  return results
