"""CycleGAN's objective and its jitted training step (Zhu et al. 2017; DiffuPT §2.2.1, eq. 1).

  L(G, F, D_X, D_Y) = L_GAN(G, D_Y) + L_GAN(F, D_X) + lambda L_cyc(G, F)
                      [+ lambda lambda_id L_identity(G, F)]
  L_cyc = E_x ||F(G(x)) - x||_1 + E_y ||G(F(y)) - y||_1             (the cycle loss, eq. 2)
  L_identity = E_y ||G(y) - y||_1 + E_x ||F(x) - x||_1

with the least-squares adversarial terms of the paper's §4: each critic minimises
0.5 [(D(real) - 1)^2 + D(fake)^2], each generator (D(fake) - 1)^2, means over patch scores. One
step updates G and F together, then D_X and D_Y on the step's fakes (the paper's 50-image
history buffer is not kept: each critic sees the current generators' fakes).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax

from jaxsynth.training import parallel, train_state

GENERATORS = ("g_xy", "g_yx")
CRITICS = ("d_x", "d_y")


@dataclasses.dataclass(frozen=True)
class CycleSettings:
  """The objective's weights, from `cyclegan.*`."""
  cycle_weight: float = 10.0        # lambda
  identity_weight: float = 0.5      # lambda_id (times lambda); 0 = no identity term
  ema_decay: float = 0.0


def lsgan_critic(d_real, d_fake) -> jax.Array:
  """A critic's least-squares loss: 0.5 [mean (D(real) - 1)^2 + mean D(fake)^2]."""
  return 0.5 * (jnp.mean(jnp.square(d_real - 1.0)) + jnp.mean(jnp.square(d_fake)))


def lsgan_generator(d_fake) -> jax.Array:
  """A generator's least-squares loss: mean (D(G(x)) - 1)^2."""
  return jnp.mean(jnp.square(d_fake - 1.0))


def cycle_loss(x, x_cycled, y, y_cycled) -> jax.Array:
  """Eq. 2: mean |F(G(x)) - x| + mean |G(F(y)) - y|."""
  return jnp.mean(jnp.abs(x_cycled - x)) + jnp.mean(jnp.abs(y_cycled - y))


def _part(params, names) -> dict:
  return {k: params[k] for k in names}


def step_program(model, settings: CycleSettings, g_tx, d_tx):
  """The pure step: (state, {"x", "y"}) -> (state, metrics); opt_state is {"generator",
  "critic"}."""
  s = settings

  def apply(params, method, images):
    return model.apply({"params": params}, images, method=method)

  def step(state: train_state.TrainState, batch):
    x, y = batch["x"], batch["y"]
    gen, crit = _part(state.params, GENERATORS), _part(state.params, CRITICS)

    def generator_loss(g):
      fake_y, fake_x = apply(g, model.to_y, x), apply(g, model.to_x, y)
      adversarial = (lsgan_generator(apply(crit, model.score_y, fake_y))
                     + lsgan_generator(apply(crit, model.score_x, fake_x)))
      cycle = cycle_loss(x, apply(g, model.to_x, fake_y), y, apply(g, model.to_y, fake_x))
      total = adversarial + s.cycle_weight * cycle
      parts = {"generator_adversarial": adversarial, "cycle": cycle}
      if s.identity_weight > 0:
        identity = (jnp.mean(jnp.abs(apply(g, model.to_y, y) - y))
                    + jnp.mean(jnp.abs(apply(g, model.to_x, x) - x)))
        total = total + s.cycle_weight * s.identity_weight * identity
        parts["identity"] = identity
      return total, (fake_x, fake_y, parts)

    (g_loss, (fake_x, fake_y, parts)), g_grads = jax.value_and_grad(
        generator_loss, has_aux=True)(gen)
    updates, g_opt = g_tx.update(g_grads, state.opt_state["generator"], gen)
    gen = optax.apply_updates(gen, updates)
    fake_x, fake_y = jax.lax.stop_gradient(fake_x), jax.lax.stop_gradient(fake_y)

    def critic_loss(c):
      return (lsgan_critic(apply(c, model.score_y, y), apply(c, model.score_y, fake_y))
              + lsgan_critic(apply(c, model.score_x, x), apply(c, model.score_x, fake_x)))

    d_loss, d_grads = jax.value_and_grad(critic_loss)(crit)
    updates, d_opt = d_tx.update(d_grads, state.opt_state["critic"], crit)
    crit = optax.apply_updates(crit, updates)
    params = {**gen, **crit}
    norm = optax.tree.norm(g_grads)
    metrics = {"generator_loss": g_loss, "critic_loss": d_loss, "generator_grad_norm": norm,
               **parts, "finite": jnp.isfinite(g_loss) & jnp.isfinite(d_loss) & jnp.isfinite(norm)}
    return state.replace(
        step=state.step + 1, params=params, opt_state={"generator": g_opt, "critic": d_opt},
        ema_params=train_state.ema_update(state.ema_params, params, s.ema_decay, state.step)
    ), metrics

  return step


def make_cycle_step(model, settings: CycleSettings, g_tx, d_tx, mesh):
  """The step as one jitted, donated program over batch-sharded x and y batches."""
  replicated, batch = parallel.replicated(mesh), parallel.batch_sharding(mesh)
  return jax.jit(step_program(model, settings, g_tx, d_tx),
                 in_shardings=(replicated, {"x": batch, "y": batch}),
                 out_shardings=(replicated, replicated), donate_argnums=0)


def _build(model, image_shape, g_tx, d_tx, key) -> train_state.TrainState:
  x = jnp.zeros((1, *image_shape), jnp.float32)
  params = model.init(key, x, x)["params"]
  opt_state = {"generator": g_tx.init(_part(params, GENERATORS)),
               "critic": d_tx.init(_part(params, CRITICS))}
  return train_state.TrainState(step=jnp.zeros((), jnp.int32), params=params, model_state={},
                                opt_state=opt_state, ema_params=params,
                                rng=jax.random.PRNGKey(0))


def init_state(model, image_shape, g_tx, d_tx, seed: int, mesh) -> train_state.TrainState:
  """The step-0 state of a CycleGAN: every network from the seed's key, one optimiser per side
  (the step draws nothing at random: the rng is unused)."""
  with jax.threefry_partitionable(False):
    return jax.jit(lambda k: _build(model, image_shape, g_tx, d_tx, k),
                   out_shardings=parallel.replicated(mesh))(
                       jax.random.fold_in(jax.random.PRNGKey(seed), 0))


def abstract_state(model, image_shape, g_tx, d_tx, mesh) -> train_state.TrainState:
  """Shapes and (replicated) shardings of init_state's result, computing nothing."""
  replicated = parallel.replicated(mesh)
  shapes = jax.eval_shape(lambda: _build(model, image_shape, g_tx, d_tx, jax.random.PRNGKey(0)))
  return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=replicated),
                      shapes)
