"""GAN train states: the step-0 variables of a BaganGP, one optimiser state per player, and the
abstract state a trained run's checkpoint restores into."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from jaxsynth.gan.rounds import AUTOENCODER, CLASS_LATENTS, STATS, generator_params
from jaxsynth.training import parallel, train_state
from jaxsynth.training.optim import make_optimizer

GAN_STREAM = 1           # fold_in tag of the rounds' state key (the root key is the seed's)
AUTOENCODER_STREAM = 3   # fold_in tag of the autoencoder stage's state key


def _init(model, image_shape, key) -> dict:
  x = jnp.zeros((1, *image_shape), jnp.float32)
  variables = dict(model.init(key, x, jnp.zeros((1,), jnp.int32)))
  if model.conditioning == "gaussian":   # BAGAN: set from the autoencoder's latents later
    d, k = model.latent_dim, model.num_classes
    variables[CLASS_LATENTS] = {"mean": jnp.zeros((k, d)), "scale": jnp.zeros((k, d, d))}
  return variables


def init_variables(model, image_shape, seed: int) -> dict:
  """Every part's step-0 variables (params, the decoder's batch statistics and, for BAGAN, the
  classes' latent Gaussians), on the host."""
  root = jax.random.fold_in(jax.random.PRNGKey(seed), 0)
  with jax.threefry_partitionable(False):
    variables = jax.jit(lambda k: _init(model, image_shape, k))(root)
  return jax.device_get(variables)


def model_state_of(variables: dict) -> dict:
  """The non-trainable collections of `variables` (batch statistics, class Gaussians)."""
  return {k: v for k, v in variables.items() if k != "params"}


def state_key(seed: int, stream: int):
  """The raw key a stage's TrainState carries (steps fold in their step number)."""
  return jax.random.fold_in(jax.random.PRNGKey(seed), stream)


def new_state(params, model_state, opt_state, rng, mesh) -> train_state.TrainState:
  """A step-0 TrainState (EMA = a copy of the params), replicated over `mesh`."""
  state = train_state.TrainState(step=jnp.zeros((), jnp.int32), params=params,
                                 model_state=model_state, opt_state=opt_state,
                                 ema_params=jax.tree.map(jnp.copy, params), rng=rng)
  return jax.device_put(state, parallel.replicated(mesh))


def optimizers(train_cfg) -> tuple[optax.GradientTransformation, optax.GradientTransformation]:
  """(generator, critic) optimisers: `train.optimizer` at `train.learning_rate` each."""
  rate = float(train_cfg.learning_rate)
  return make_optimizer(train_cfg, rate), make_optimizer(train_cfg, rate)


def autoencoder_state(variables: dict, tx, seed: int, mesh) -> train_state.TrainState:
  """The autoencoder stage's step-0 state: params {encoder, [embedding,] decoder}."""
  params = {k: variables["params"][k] for k in AUTOENCODER if k in variables["params"]}
  return new_state(params, {STATS: variables[STATS]}, tx.init(params),
                   state_key(seed, AUTOENCODER_STREAM), mesh)


def gan_state(variables: dict, g_tx, c_tx, seed: int, mesh) -> train_state.TrainState:
  """The round-0 state: the whole BaganGP tree, opt_state {"generator": ..., "critic": ...}."""
  params = variables["params"]
  opt_state = {"generator": g_tx.init(generator_params(params)),
               "critic": c_tx.init(params["critic"])}
  return new_state(params, model_state_of(variables), opt_state, state_key(seed, GAN_STREAM),
                   mesh)


def abstract_gan_state(model, image_shape, train_cfg, mesh) -> train_state.TrainState:
  """Shapes, dtypes and (replicated) shardings of a run's round state, computing nothing."""
  g_tx, c_tx = optimizers(train_cfg)

  def build():
    variables = _init(model, image_shape, jax.random.PRNGKey(0))
    params = variables["params"]
    return train_state.TrainState(
        step=jnp.zeros((), jnp.int32), params=params, model_state=model_state_of(variables),
        opt_state={"generator": g_tx.init(generator_params(params)),
                   "critic": c_tx.init(params["critic"])},
        ema_params=params, rng=jax.random.PRNGKey(0))

  shapes = jax.eval_shape(build)
  replicated = parallel.replicated(mesh)
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated),
                      shapes)
