"""The jitted programs of GAN training: one autoencoder step, and one critic/generator round.

A round (WGAN-GP's Algorithm 1 with BAGAN-GP's labels) is ONE compiled program: `critic_steps`
critic updates inside a `lax.scan`, each on its own real batch, fake images from fresh noise and
labels, and the gradient penalty; then one generator update against the updated critic. The
round's batch holds critic_steps x batch_size real images, reshaped to (critic_steps, B, ...).

Keys: the round's key is fold_in(state.rng, round); critic step i draws from
fold_in(fold_in(key, CRITIC_STREAM), i), the generator step from fold_in(key, GENERATOR_STREAM).
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxsynth.gan import losses
from jaxsynth.models.gan import class_conditional_latent
from jaxsynth.training import parallel, train_state

GENERATOR = ("embedding", "decoder")   # the generator's parameters in the BaganGP tree
AUTOENCODER = ("encoder", "embedding", "decoder")   # (BAGAN's have no embedding)
STATS = "batch_stats"                  # the decoder's batch norm statistics
CLASS_LATENTS = "class_latents"        # BAGAN: the classes' latent Gaussians (fixed in rounds)
CRITIC_STREAM = 0
GENERATOR_STREAM = 1


@dataclasses.dataclass(frozen=True)
class RoundSettings:
  """What a round does, from `gan.*` and `train.batch_size`."""
  batch_size: int
  num_classes: int
  latent_dim: int
  critic_steps: int = 5
  adversarial: str = "logistic"        # logistic (eq. 10-15) | wasserstein (eq. 8-9) |
  #                                      classifier (BAGAN: K + 1 way, `fake` = K)
  wrong_label_term: bool = True        # eq. 14's -log(1 - D(x_r, y_wrong))
  fake_labels: str = "uniform"         # uniform (balanced, eq. 14) | real (eq. 12-13)
  gp_weight: float = 10.0
  gp_alpha: str = "uniform"            # uniform (paper) | normal (the authors' code)
  ema_decay: float = 0.0
  autoencoder_loss: str = "l1"         # l1 (BAGAN-GP's code) | l2 (BAGAN)

  @property
  def fake_batch(self) -> int:
    """Fake images per critic update: B, or ceil(B / K) for BAGAN's classifier critic (so that
    1/(K+1) of its batch is fake)."""
    if self.adversarial == "classifier":
      return -(-self.batch_size // self.num_classes)
    return self.batch_size


def generator_params(params) -> dict:
  """The generator's part {embedding, decoder} of a BaganGP parameter tree."""
  return {k: params[k] for k in GENERATOR if k in params}


def generator_latent(noise, labels, model_state):
  """The generator's input for N(0, I) `noise`: itself, or (BAGAN) the class's Gaussian draw."""
  if CLASS_LATENTS in model_state:
    return class_conditional_latent(noise, labels, model_state[CLASS_LATENTS])
  return noise


def make_autoencoder_step(model: nn.Module, tx, mesh, ema_decay: float = 0.0,
                          loss: str = "l1"):
  """Jitted (state, batch) -> (state, metrics): one L1 (or L2) step of the autoencoder: the
  supervised one of BAGAN-GP (Fig. 3), BAGAN's unconditional one. The state's params are
  {encoder, [embedding,] decoder}."""

  def step(state: train_state.TrainState, batch):
    x = jax.lax.with_sharding_constraint(batch["image"], parallel.batch_sharding(mesh))

    def loss_fn(params):
      recon, new = model.apply({"params": params, **state.model_state}, x, batch["label"],
                               train=True, method=model.reconstruct, mutable=[STATS])
      error = recon - x
      return jnp.mean(jnp.abs(error) if loss == "l1" else jnp.square(error)), new

    (value, new_state), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    grad_norm = optax.tree.norm(grads)
    state = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                          model_state=dict(new_state),
                          ema_params=train_state.ema_update(state.ema_params, params, ema_decay,
                                                            state.step))
    return state, {loss: value, "grad_norm": grad_norm,
                   "finite": jnp.isfinite(value) & jnp.isfinite(grad_norm)}

  replicated = parallel.replicated(mesh)
  return jax.jit(step, in_shardings=(replicated, parallel.batch_sharding(mesh)),
                 out_shardings=(replicated, replicated), donate_argnums=0)


class Draws(NamedTuple):
  """What one critic (or generator) update draws: noise, fake and wrong labels, alpha."""
  noise: jax.Array           # z ~ N(0, I), (B, latent_dim)
  fake_labels: jax.Array     # y_f: uniform over classes, or the real labels (fake_labels=real)
  wrong_labels: jax.Array | None   # y_wrong != y_r, uniform over the others (eq. 14), or None
  alpha: jax.Array           # interpolation weights of the penalty, (B, 1, 1, 1)


def critic_draws(key, real_labels, settings: RoundSettings, fake_batch: int = 0) -> Draws:
  """The draws of one update from its key, given the real labels of its batch; `fake_batch`
  fakes (default settings.fake_batch)."""
  s, b, f = settings, real_labels.shape[0], fake_batch or settings.fake_batch
  k_noise, k_label, k_wrong, k_alpha = jax.random.split(key, 4)
  fake = (losses.balanced_labels(k_label, f, s.num_classes) if s.fake_labels == "uniform"
          else real_labels)
  wrong = losses.wrong_labels(k_wrong, real_labels, s.num_classes) if s.wrong_label_term else None
  return Draws(jax.random.normal(k_noise, (f, s.latent_dim)), fake, wrong,
               losses.interpolation_weights(k_alpha, b, s.gp_alpha))


def round_program(model: nn.Module, settings: RoundSettings, g_tx, c_tx, mesh=None):
  """The pure round: (state, batch) -> (state, metrics). state.params is the whole BaganGP
  tree; state.opt_state is {"generator": ..., "critic": ...}."""
  s = settings
  per_step = None if mesh is None else NamedSharding(mesh, P(None, parallel.DATA_AXIS))

  def critic_of(critic_params):
    return lambda x, y: model.apply({"params": {"critic": critic_params}}, x, y,
                                    method=model.criticise)

  def generate(gen_params, stats, class_latents, noise, labels):
    z = generator_latent(noise, labels, class_latents)
    fake, new = model.apply({"params": gen_params, STATS: stats}, z, labels, train=True,
                            method=model.generate, mutable=[STATS])
    return fake, new[STATS]

  def round_fn(state: train_state.TrainState, batch):
    n, b = s.critic_steps, s.batch_size
    images = batch["image"].reshape((n, b) + batch["image"].shape[1:])
    real_labels = batch["label"].reshape(n, b)
    if per_step is not None:
      images = jax.lax.with_sharding_constraint(images, per_step)
      real_labels = jax.lax.with_sharding_constraint(real_labels, per_step)
    key = jax.random.fold_in(state.rng, state.step)
    critic_key = jax.random.fold_in(key, CRITIC_STREAM)
    critic_keys = jax.vmap(lambda i: jax.random.fold_in(critic_key, i))(jnp.arange(n))
    gen_params = generator_params(state.params)
    fixed = {k: v for k, v in state.model_state.items() if k != STATS}   # BAGAN's Gaussians

    def critic_step(carry, xs):
      critic_params, opt_state, stats = carry
      real, y_real, k = xs
      draws = critic_draws(k, y_real, s)
      y_fake, y_wrong, alpha = draws.fake_labels, draws.wrong_labels, draws.alpha
      fake, stats = generate(gen_params, stats, fixed, draws.noise, y_fake)
      fake = jax.lax.stop_gradient(fake)

      def loss_fn(cp):
        critic = critic_of(cp)
        d_real, d_fake = critic(real, y_real), critic(fake, y_fake)
        if s.adversarial == "classifier":
          loss = losses.classifier_critic_terms(d_real, y_real, d_fake, s.num_classes)
          return loss, {"real_accuracy": jnp.mean(jnp.argmax(d_real, -1) == y_real),
                        "fake_detected": jnp.mean(jnp.argmax(d_fake, -1) == s.num_classes)}
        d_wrong = critic(real, y_wrong) if y_wrong is not None else None
        adversarial = losses.critic_terms(s.adversarial, d_real, d_fake, d_wrong)
        parts = {"d_real": jnp.mean(d_real), "d_fake": jnp.mean(d_fake)}
        if d_wrong is not None:
          parts["d_wrong"] = jnp.mean(d_wrong)
        if s.gp_weight > 0:
          parts["gradient_penalty"] = losses.gradient_penalty(critic, real, fake, y_real, alpha)
          adversarial = adversarial + s.gp_weight * parts["gradient_penalty"]
        return adversarial, parts

      (loss, parts), grads = jax.value_and_grad(loss_fn, has_aux=True)(critic_params)
      updates, opt_state = c_tx.update(grads, opt_state, critic_params)
      critic_params = optax.apply_updates(critic_params, updates)
      parts.update(critic_loss=loss, critic_grad_norm=optax.tree.norm(grads))
      return (critic_params, opt_state, stats), parts

    carry = (state.params["critic"], state.opt_state["critic"], state.model_state[STATS])
    (critic_params, critic_opt, stats), critic_parts = jax.lax.scan(
        critic_step, carry, (images, real_labels, critic_keys))

    # Generator labels: balanced draws, or (fake_labels=real) the last critic batch's labels;
    # a batch of B fakes (BAGAN too: "a batch of the same size" as the critic's real batch).
    draws = critic_draws(jax.random.fold_in(key, GENERATOR_STREAM), real_labels[-1], s, b)
    y_fake, z = draws.fake_labels, draws.noise

    def generator_loss(gp):
      fake, new_stats = generate(gp, stats, fixed, z, y_fake)
      scores = critic_of(critic_params)(fake, y_fake)
      if s.adversarial == "classifier":   # D should name the class the image was drawn for
        return losses.classifier_generator_terms(scores, y_fake), new_stats
      return losses.generator_terms(s.adversarial, scores), new_stats

    (g_loss, stats), g_grads = jax.value_and_grad(generator_loss, has_aux=True)(gen_params)
    updates, gen_opt = g_tx.update(g_grads, state.opt_state["generator"], gen_params)
    gen_params = optax.apply_updates(gen_params, updates)
    params = dict(state.params, critic=critic_params, **gen_params)
    metrics = {k: jnp.mean(v) for k, v in critic_parts.items()}
    g_norm = optax.tree.norm(g_grads)
    metrics.update(generator_loss=g_loss, generator_grad_norm=g_norm,
                   finite=jnp.isfinite(metrics["critic_loss"]) & jnp.isfinite(g_loss) &
                   jnp.isfinite(g_norm))
    new_state = state.replace(
        step=state.step + 1, params=params, model_state={**fixed, STATS: stats},
        opt_state={"generator": gen_opt, "critic": critic_opt},
        ema_params=train_state.ema_update(state.ema_params, params, s.ema_decay, state.step))
    return new_state, metrics

  return round_fn


def make_round(model: nn.Module, settings: RoundSettings, g_tx, c_tx, mesh):
  """The round as one jitted, donated program over a batch-sharded (critic_steps x B) batch."""
  replicated = parallel.replicated(mesh)
  return jax.jit(round_program(model, settings, g_tx, c_tx, mesh),
                 in_shardings=(replicated, parallel.batch_sharding(mesh)),
                 out_shardings=(replicated, replicated), donate_argnums=0)


def make_generate(model: nn.Module):
  """Jitted (params, model_state, noise, labels) -> images (inference-mode batch norm; BAGAN's
  noise becomes the class's latent draw)."""

  def generate(params, model_state, noise, labels):
    z = generator_latent(noise, labels, model_state)
    return model.apply({"params": generator_params(params), STATS: model_state[STATS]}, z,
                       labels, method=model.generate)

  return jax.jit(generate)
