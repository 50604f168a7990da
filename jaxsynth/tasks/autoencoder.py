"""Task `train_autoencoder`: a VQ or KL autoencoder (models/autoencoder.py), the first stage of
latent diffusion, on any data source; checkpoints, resume, validation PSNR / SSIM / L1 and
codebook usage, and reconstruction grids (originals above their reconstructions).

The loss (VQGAN, Esser et al. 2021, eq. 4-7; LDM's KL variant):
  L_rec = l1_weight |x - x^| + l2_weight (x - x^)^2 + ssim_weight (1 - SSIM(x, x^))
          + lpips_weight LPIPS(x, x^)   (models/lpips.py; weights given by path)
  L_AE  = L_rec + codebook + commitment losses (VQ) | kl_weight KL(q(z|x) || N(0, I)) (KL)
          + lambda disc_weight L_G  after disc_start steps, with L_G = -mean D(x^) and
  lambda = ||grad_W L_AE'|| / (||grad_W L_G|| + 1e-4), clipped to [0, 1e4]  (eq. 7; W = the
  decoder's last layer, L_AE' = L_AE without the adversarial term);
the critic minimises the hinge loss 0.5 (mean relu(1 - D(x)) + mean relu(1 + D(x^))). SSIM is
computed on the images mapped back to [0, 1], LPIPS on them in [-1, 1] as RGB. One forward
pass gives both L_AE' and L_G; their gradients come from two pullbacks of it, so lambda costs a
second backward, not a second model.

VQ runs restart codes whose usage share fell below `train.restart_threshold` every
`train.restart_every` steps onto random encoder outputs of the batch (0 = never).
"""

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
from jaxsynth.data import augment, pipeline
from jaxsynth.data.base import ImageSource
from jaxsynth.data.sources import open_source
from jaxsynth.errors import ConfigError
from jaxsynth.metrics.image_quality import psnr, ssim
from jaxsynth.models import autoencoder as ae
from jaxsynth.models.lpips import LPIPS, MIN_SIZE, load_lpips
from jaxsynth.training import parallel, train_state, workdir as workdir_lib
from jaxsynth.training.checkpoint import Checkpointer
from jaxsynth.training.loop import LoopSettings, StopRequest, train_loop
from jaxsynth.training.optim import learning_rate_schedule, make_optimizer
from jaxsynth.training.writers import MetricWriter, image_grid, png_bytes

log = logging.getLogger(__name__)

GRIDS_DIR = "grids"
VAL_STREAM = 1          # fold_in tag of the validation keys
SSIM_WINDOW = 11


@dataclasses.dataclass
class Setup:
  """What the task derives from the config: data, model, mesh and run length."""
  train: ImageSource
  model: nn.Module
  mesh: jax.sharding.Mesh
  image_shape: tuple[int, int, int]
  steps_per_epoch: int
  total_steps: int
  mean: np.ndarray
  std: np.ndarray
  lpips_params: dict | None = None   # LPIPS weights when loss.lpips_weight > 0

  @property
  def is_vq(self) -> bool:
    return isinstance(self.model.autoencoder, ae.VQAutoencoder)


def _bad(key: str, value, fix: str) -> ConfigError:
  return ConfigError(f"config key '{key}' has bad value {value!r}: {fix}")


def check_config(config) -> None:
  """Raises ConfigError for a bad `loss.*` or restart key."""
  loss = config.loss
  for key in ("l1_weight", "l2_weight", "ssim_weight", "lpips_weight", "kl_weight",
              "disc_weight"):
    if loss[key] < 0:
      raise _bad(f"loss.{key}", loss[key], "use a weight >= 0")
  if loss.l1_weight + loss.l2_weight + loss.ssim_weight + loss.lpips_weight == 0:
    raise _bad("loss.l1_weight", loss.l1_weight, "give at least one reconstruction term a "
               "positive weight (l1_weight, l2_weight, ssim_weight or lpips_weight)")
  if loss.lpips_weight > 0 and not (loss.lpips_backbone and loss.lpips_lin):
    raise _bad("loss.lpips_weight", loss.lpips_weight, "LPIPS needs its weights: set "
               "loss.lpips_backbone (torchvision vgg16/alexnet state dict) and loss.lpips_lin "
               "(the lpips package's weights/v0.1/<net>.pth), or lpips_weight=0")
  if loss.disc_start < 0:
    raise _bad("loss.disc_start", loss.disc_start, "use a step count >= 0")
  if config.train.restart_every < 0 or not 0 <= config.train.restart_threshold < 1:
    raise _bad("train.restart_every", config.train.restart_every,
               "use 0 (off) or a step count, with train.restart_threshold in [0, 1)")
  betas = tuple(config.train.adam_betas)
  if len(betas) != 2 or not all(0 <= b < 1 for b in betas):
    raise _bad("train.adam_betas", betas, "give two values in [0, 1), e.g. (0.5, 0.9)")


def build_setup(config) -> Setup:
  """Opens the train split and builds the autoencoder (and critic), mesh and run length."""
  check_config(config)
  train = open_source(config.data, "train", seed=config.seed)
  shape = pipeline.input_shape(config.data, train)
  model = ae.make_autoencoder(config.model, shape[-1], with_critic=config.loss.disc_weight > 0)
  f = model.autoencoder.factor
  if shape[0] % f or shape[1] % f:
    raise _bad("model.channels", tuple(config.model.channels),
               f"{len(config.model.channels)} levels downsample by {f}, which must divide the "
               f"{shape[0]}x{shape[1]} images; change data.image_size or the levels")
  if config.loss.ssim_weight > 0 and min(shape[:2]) < SSIM_WINDOW:
    raise _bad("loss.ssim_weight", config.loss.ssim_weight,
               f"SSIM needs images of at least {SSIM_WINDOW} px ({shape[0]} px here); set 0")
  mesh = parallel.make_mesh(config.mesh)
  parallel.check_batch_divisible(config.train.batch_size, mesh, "train.batch_size")
  steps_per_epoch = max(1, -(-len(train) // config.train.batch_size))
  total = (config.train.steps if config.train.steps > 0
           else max(1, int(round(config.train.epochs * steps_per_epoch))))
  mean, std = augment.normalisation(config.data, shape[-1])
  perceptual = None
  if config.loss.lpips_weight > 0:
    net = config.loss.lpips_net
    if net not in MIN_SIZE:
      raise _bad("loss.lpips_net", net, f"use one of {', '.join(MIN_SIZE)}")
    if min(shape[:2]) < MIN_SIZE[net]:
      raise _bad("loss.lpips_weight", config.loss.lpips_weight,
                 f"LPIPS-{net} needs images of at least {MIN_SIZE[net]} px ({shape[0]} px here); "
                 "set 0 or use larger images")
    for key in ("lpips_backbone", "lpips_lin"):
      if not os.path.isfile(config.loss[key]):
        raise _bad(f"loss.{key}", config.loss[key], "no such file; give the .safetensors or "
                   ".pth weights (torchvision's backbone state dict for lpips_backbone, the lpips "
                   "package's weights/v0.1/<net>.pth for lpips_lin)")
    perceptual = load_lpips(config.loss.lpips_backbone, config.loss.lpips_lin, net)
  return Setup(train, model, mesh, shape, steps_per_epoch, total, mean, std, perceptual)


def make_tx(config, setup: Setup):
  """The learning-rate schedule and the optimiser (`train.adam_betas`; VQGAN: 0.5, 0.9)."""
  schedule = learning_rate_schedule(config.train, setup.steps_per_epoch, setup.total_steps)
  return schedule, make_optimizer(config.train, schedule)


def to_unit(x, mean, std):
  """Normalised images back to [0, 1] (clipped) for PSNR and SSIM."""
  return jnp.clip(x * jnp.asarray(std) + jnp.asarray(mean), 0.0, 1.0)


def perceptual_distance(x, y, lpips_params, net: str, mean, std):
  """LPIPS per image between normalised images (gray repeated to RGB), (B,)."""
  x, y = (2.0 * to_unit(a, mean, std) - 1.0 for a in (x, y))
  if x.shape[-1] == 1:
    x, y = jnp.repeat(x, 3, axis=-1), jnp.repeat(y, 3, axis=-1)
  return LPIPS(net).apply({"params": lpips_params}, x, y)


def reconstruction_loss(x, recon, loss_cfg, mean, std, lpips_params=None):
  """L_rec of the module docstring and its parts (l1, l2, ssim, lpips)."""
  l1 = jnp.mean(jnp.abs(recon - x))
  l2 = jnp.mean((recon - x) ** 2)
  total = loss_cfg.l1_weight * l1 + loss_cfg.l2_weight * l2
  parts = {"l1": l1, "l2": l2}
  if loss_cfg.ssim_weight > 0:
    s = jnp.mean(ssim(to_unit(recon, mean, std), to_unit(x, mean, std)))
    total = total + loss_cfg.ssim_weight * (1.0 - s)
    parts["ssim"] = s
  if loss_cfg.lpips_weight > 0:
    d = jnp.mean(perceptual_distance(x, recon, lpips_params, loss_cfg.lpips_net, mean, std))
    total = total + loss_cfg.lpips_weight * d
    parts["lpips"] = d
  return total, parts


def adaptive_weight(g_rec, g_gan) -> jax.Array:
  """VQGAN eq. 7: ||g_rec|| / (||g_gan|| + 1e-4) on the decoder's last layer, in [0, 1e4]."""
  lam = jnp.linalg.norm(g_rec) / (jnp.linalg.norm(g_gan) + 1e-4)
  return jax.lax.stop_gradient(jnp.clip(lam, 0.0, 1e4))


def _last_layer(tree):
  return tree["decoder"]["conv_out"]["kernel"]


def make_train_step(setup: Setup, config, tx, lr_schedule):
  """The jitted, donated step: (state, batch) -> (state, metrics) on a batch-sharded batch."""
  model, mesh, loss_cfg = setup.model, setup.mesh, config.loss
  use_critic = loss_cfg.disc_weight > 0
  restart_every = int(config.train.restart_every) if setup.is_vq else 0
  threshold = float(config.train.restart_threshold)

  def step(state: train_state.TrainState, batch, lpips_params):
    x = jax.lax.with_sharding_constraint(batch["image"], parallel.batch_sharding(mesh))
    latent_key, restart_key = jax.random.split(jax.random.fold_in(state.rng, state.step))
    critic_params = state.params.get("critic")

    def forward(ae_params):
      params = {"autoencoder": ae_params}
      if use_critic:
        params["critic"] = critic_params
      (recon, aux), new_state = model.apply(
          {"params": params, **state.model_state}, x, train=True, method=model.reconstruct,
          rngs={"latent": latent_key}, mutable=list(state.model_state))
      rec, parts = reconstruction_loss(x, recon, loss_cfg, setup.mean, setup.std, lpips_params)
      if setup.is_vq:
        reg = aux["codebook_loss"] + aux["commitment_loss"]
        parts.update(codebook_loss=aux["codebook_loss"], commitment_loss=aux["commitment_loss"],
                     perplexity=aux["perplexity"], codes_used=aux["codes_used"])
      else:
        reg = loss_cfg.kl_weight * aux["kl"]
        parts["kl"] = aux["kl"]
      gan = jnp.zeros((), jnp.float32)
      if use_critic:
        gan = -jnp.mean(model.apply({"params": params}, recon, method=model.criticise))
      return (rec + reg, gan), (recon, parts, new_state, aux.get("encoded"))

    (ae_loss, gan), pullback, (recon, parts, new_model_state, encoded) = jax.vjp(
        forward, state.params["autoencoder"], has_aux=True)
    (g_ae,) = pullback((jnp.ones_like(ae_loss), jnp.zeros_like(gan)))
    grads = {"autoencoder": g_ae}
    loss = ae_loss
    if use_critic:
      on = (state.step >= loss_cfg.disc_start).astype(jnp.float32)
      (g_gan,) = pullback((jnp.zeros_like(ae_loss), jnp.ones_like(gan)))
      lam = adaptive_weight(_last_layer(g_ae), _last_layer(g_gan)) * loss_cfg.disc_weight * on
      grads["autoencoder"] = jax.tree.map(lambda a, b: a + lam * b, g_ae, g_gan)
      loss = ae_loss + lam * gan

      def critic_loss(cp):
        real = model.apply({"params": {"critic": cp}}, x, method=model.criticise)
        fake = model.apply({"params": {"critic": cp}}, jax.lax.stop_gradient(recon),
                           method=model.criticise)
        return on * 0.5 * (jnp.mean(nn.relu(1.0 - real)) + jnp.mean(nn.relu(1.0 + fake)))

      d_loss, grads["critic"] = jax.value_and_grad(critic_loss)(critic_params)
      parts.update(critic_loss=d_loss, generator_loss=gan, adaptive_weight=lam)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    model_state = new_model_state
    if restart_every:
      # An EMA codebook lives in the statistics, and its quantizer has no parameters.
      old_params = params["autoencoder"].get("quantizer", {})
      q_params, q_stats, restarted = ae.restart_dead_codes(
          old_params, model_state[ae.STATS]["autoencoder"]["quantizer"],
          encoded.reshape(-1, encoded.shape[-1]), restart_key, threshold)
      due = (state.step + 1) % restart_every == 0
      pick = lambda new, old: jax.tree.map(lambda a, b: jnp.where(due, a, b), new, old)
      if old_params:
        params = dict(params, autoencoder=dict(params["autoencoder"],
                                               quantizer=pick(q_params, old_params)))
      stats = model_state[ae.STATS]
      model_state = {ae.STATS: dict(stats, autoencoder=dict(stats["autoencoder"], quantizer=pick(
          q_stats, stats["autoencoder"]["quantizer"])))}
      parts["codes_restarted"] = jnp.where(due, restarted, 0).astype(jnp.float32)
    grad_norm = optax.tree.norm(grads)
    new_state = state.replace(
        step=state.step + 1, params=params, opt_state=opt_state, model_state=model_state,
        ema_params=train_state.ema_update(state.ema_params, params, config.train.ema_decay,
                                          state.step))
    metrics = {"loss": loss, "grad_norm": grad_norm, "learning_rate": lr_schedule(state.step),
               **parts, "finite": jnp.isfinite(loss) & jnp.isfinite(grad_norm)}
    return new_state, metrics

  replicated = parallel.replicated(mesh)
  # The LPIPS weights are an argument, not constants folded into the compiled program.
  jitted = jax.jit(step, in_shardings=(replicated, parallel.batch_sharding(mesh), replicated),
                   out_shardings=(replicated, replicated), donate_argnums=0)
  perceptual = setup.lpips_params or {}
  return lambda state, batch: jitted(state, batch, perceptual)


def make_reconstruct(setup: Setup):
  """Jitted (params, model_state, images) -> reconstructions (evaluation mode)."""
  model = setup.model

  def reconstruct(params, model_state, x):
    recon, aux = model.apply({"params": params, **model_state}, x, method=model.reconstruct)
    return recon, aux.get("indices")

  return jax.jit(reconstruct)


def make_perceptual(config, setup: Setup):
  """Jitted (x, recon) -> LPIPS per image, or None without LPIPS weights."""
  if setup.lpips_params is None:
    return None
  net, params = config.loss.lpips_net, setup.lpips_params

  def distance(x, recon, lpips_params):
    return perceptual_distance(x, recon, lpips_params, net, setup.mean, setup.std)

  distance = jax.jit(distance)
  return lambda x, recon: distance(x, recon, params)


def make_evaluate(config, setup: Setup):
  """evaluate_fn(state) -> val L1, PSNR (dB), SSIM on [0, 1] images, LPIPS when its weights are
  given (means per image; `per_class`: the same per class label) and, for VQ, the share of
  codes used and the codes' perplexity over the whole validation split."""
  val = open_source(config.data, "val", seed=config.seed)
  reconstruct = make_reconstruct(setup)
  perceptual = make_perceptual(config, setup)
  num_codes = setup.model.autoencoder.num_codes if setup.is_vq else 0
  limit = int(config.train.val_batches)
  with_ssim = min(setup.image_shape[:2]) >= SSIM_WINDOW   # the window must fit the image
  num_classes = max(1, val.num_classes)

  def evaluate(state) -> dict:
    sums = {"l1": 0.0, "psnr": 0.0, "ssim": 0.0, "lpips": 0.0}
    class_sums = {k: np.zeros(num_classes) for k in sums}
    count, class_count, codes = 0.0, np.zeros(num_classes), np.zeros(max(num_codes, 1))
    batches = pipeline.eval_dataset(val, config.data, global_batch=config.train.eval_batch_size)
    for b, batch in enumerate(batches):
      if limit and b == limit:
        break
      x, mask = jnp.asarray(batch["image"]), np.asarray(batch["mask"])
      recon, indices = reconstruct(state.ema_params, state.model_state, x)
      unit_x, unit_r = to_unit(x, setup.mean, setup.std), to_unit(recon, setup.mean, setup.std)
      per_image = {"l1": np.mean(np.abs(np.asarray(recon - x)), axis=(1, 2, 3)),
                   "psnr": np.asarray(psnr(unit_r, unit_x))}
      if with_ssim:
        per_image["ssim"] = np.asarray(ssim(unit_r, unit_x))
      if perceptual is not None:
        per_image["lpips"] = np.asarray(perceptual(x, recon))
      labels = np.asarray(batch["label"])
      for k, v in per_image.items():
        sums[k] += float(np.sum(v * mask))
        np.add.at(class_sums[k], labels, v * mask)
      count += float(mask.sum())
      np.add.at(class_count, labels, mask)
      if num_codes:
        used = np.asarray(indices)[mask > 0].reshape(-1)
        codes += np.bincount(used, minlength=num_codes)
    measured = {"l1", "psnr"} | ({"ssim"} if with_ssim else set())
    measured |= {"lpips"} if perceptual is not None else set()
    results = {k: v / max(count, 1.0) for k, v in sums.items() if k in measured}
    seen = class_count > 0   # classes absent from the split get None
    results["per_class"] = {k: [float(x) if ok else None for x, ok in
                                zip(class_sums[k] / np.maximum(class_count, 1.0), seen)]
                            for k in sorted(measured)}
    results["per_class"]["count"] = class_count.astype(int).tolist()
    if num_codes:
      p = codes / max(codes.sum(), 1.0)
      results["codebook_usage"] = float(np.mean(codes > 0))
      results["perplexity"] = float(np.exp(-np.sum(p[p > 0] * np.log(p[p > 0]))))
    return results

  return evaluate


def make_grid_fn(config, setup: Setup, workdir: str, writer: MetricWriter):
  """fn(step, state): the first `train.grid_images` val images above their reconstructions,
  written to grids/step-NNNNNN.png and TensorBoard."""
  val = open_source(config.data, "val", seed=config.seed)
  n = min(int(config.train.grid_images), len(val))
  batch = next(iter(pipeline.eval_dataset(val, config.data, global_batch=n)))
  originals = np.asarray(batch["image"])[:n]
  reconstruct = make_reconstruct(setup)

  def write(step: int, state) -> None:
    recon, _ = reconstruct(state.ema_params, state.model_state, jnp.asarray(originals))
    grid = image_grid(np.concatenate([originals, np.asarray(recon)]), columns=n,
                      mean=setup.mean, std=setup.std)
    if jax.process_index() == 0:
      files.atomic_write(os.path.join(workdir, GRIDS_DIR, f"step-{step:06d}.png"),
                         png_bytes(grid))
    writer.image(step, "reconstructions", grid)

  return write


def train_autoencoder(config, workdir: str, overwrite: bool = False,
                      stop: StopRequest | None = None) -> dict:
  """Trains the autoencoder (resuming an unfinished run in `workdir`); writes metrics.json."""
  check_config(config)
  done = workdir_lib.finished_results(workdir, config, overwrite)
  if done is not None:
    return done
  workdir_lib.check_prepare(workdir, config, overwrite)
  setup = build_setup(config)
  workdir_lib.prepare(workdir, config, overwrite)
  log.info("train split of %s: %d images of %s", setup.train.name, len(setup.train),
           setup.image_shape)
  lr_schedule, tx = make_tx(config, setup)
  state = train_state.init_state(setup.model, tx, setup.image_shape, config.seed, setup.mesh)
  checkpointer = Checkpointer(workdir, config.train.keep_checkpoints)
  state, meta = checkpointer.resume(state)
  start = int(jax.device_get(state.step))
  step_fn = make_train_step(setup, config, tx, lr_schedule)
  evaluate_fn = make_evaluate(config, setup)
  dataset = pipeline.train_dataset(
      setup.train, config.data, global_batch=config.train.batch_size, seed=config.seed,
      start_step=start, num_steps=setup.total_steps, process_index=jax.process_index(),
      process_count=jax.process_count())
  settings = LoopSettings.from_train_config(config.train, setup.total_steps, setup.steps_per_epoch)
  writer = MetricWriter(workdir, resume_step=start)
  try:
    periodic = ()
    if config.train.sample_every > 0:
      periodic = ((config.train.sample_every, make_grid_fn(config, setup, workdir, writer)),)
    batches = parallel.global_batches(dataset, setup.mesh)
    state, meta = train_loop(state, step_fn, batches, settings, checkpointer, writer,
                             evaluate_fn, meta, stop, periodic)
    results = {"steps": setup.total_steps, "model": config.model.name,
               "latent_shape": [setup.image_shape[0] // setup.model.autoencoder.factor,
                                setup.image_shape[1] // setup.model.autoencoder.factor,
                                int(config.model.latent_channels)],
               "val": evaluate_fn(state),
               "checkpoint": {"latest": checkpointer.latest_step(), "best": meta.get("best_step"),
                              "best_value": meta.get("best_value")}}
    if "train" in meta:
      results["train"] = {k: float(v) for k, v in meta["train"].items()}
    if jax.process_index() == 0:
      faults.point("task.before_metrics")
      workdir_lib.write_json(os.path.join(workdir, workdir_lib.METRICS_FILE), results)
  finally:
    writer.close()
    checkpointer.close()
  log.info("autoencoder training finished: %s", results)
  return results
