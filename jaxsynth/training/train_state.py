"""The train state shared by every model kind: a pytree of step, params, optimiser state, EMA."""

from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax

from jaxsynth.training import parallel


@flax.struct.dataclass
class TrainState:
  """Everything a training step reads and writes; plain arrays, so orbax saves it as is."""
  step: jax.Array
  params: Any
  model_state: Any          # non-trainable collections, e.g. BatchNorm's batch_stats
  opt_state: Any
  ema_params: Any
  rng: jax.Array            # raw uint32 key; steps draw from fold_in(rng, step)


def create(params, model_state, tx: optax.GradientTransformation, rng: jax.Array) -> TrainState:
  """Builds the step-0 state; EMA params start as a copy of the params."""
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, model_state=model_state,
                    opt_state=tx.init(params), ema_params=jax.tree.map(jnp.copy, params),
                    rng=rng)


def ema_decay_at(decay: float, step):
  """The EMA decay of update `step` (0-based): min(decay, (1 + step) / (10 + step)).

  The warm-up of TF's ExponentialMovingAverage(num_updates) and diffusers' EMAModel: without
  it the average starts at the initial weights and keeps decay^t of them after t steps (37% at
  decay 0.999 after 1,000 steps), so a short run's EMA model is a blend with its random init.
  """
  step = jnp.asarray(step, jnp.float32)
  return jnp.minimum(decay, (1.0 + step) / (10.0 + step))


def ema_update(ema, params, decay: float, step):
  """EMA of parameters: ema <- d * ema + (1 - d) * params with d = ema_decay_at(decay, step)
  (decay 0 copies params)."""
  if decay == 0.0:
    return params
  d = ema_decay_at(decay, step)
  return jax.tree.map(lambda e, p: (d * e + (1.0 - d) * p).astype(e.dtype), ema, params)


def _init_fn(model, tx, shape, extra_inputs, split=False):
  """The pure init: root key -> step-0 TrainState (model.init on a batch of one).

  With `split`, returns the two halves instead: init key -> variables, and
  (variables, state key) -> TrainState, so loaded weights can replace the variables between.
  """

  def variables_of(init_key):
    variables = model.init(init_key, jnp.zeros((1, *shape), jnp.float32), *extra_inputs,
                           train=False)
    return dict(variables)

  def state_of(variables, state_key):
    variables = dict(variables)
    params = variables.pop("params")
    return create(params, variables, tx, state_key)

  def init(root):
    init_key, state_key = jax.random.split(root)
    return state_of(variables_of(init_key), state_key)

  return (variables_of, state_of) if split else init


def init_state(model, tx, shape, seed: int, mesh, extra_inputs=(), pretrained=None) -> TrainState:
  """Initialises the train state from the root key of `seed`, replicated over the mesh.

  `extra_inputs` follow the (1, *shape) zeros in model.init, e.g. a denoiser's t and labels.
  `pretrained` (optional) maps the freshly initialised variables to loaded ones on the host.
  """
  # Non-partitionable threefry compiles the ~100 initialiser draws 4x faster on CPU; the
  # state is replicated, so partitioning the draws buys nothing here.
  root = jax.random.PRNGKey(seed)
  replicated = parallel.replicated(mesh)
  with jax.threefry_partitionable(False):
    if pretrained is None:
      return jax.jit(_init_fn(model, tx, shape, extra_inputs), out_shardings=replicated)(root)
    variables_of, state_of = _init_fn(model, tx, shape, extra_inputs, split=True)
    init_key, state_key = jax.random.split(root)
    variables = pretrained(jax.device_get(jax.jit(variables_of)(init_key)))
    return jax.jit(state_of, out_shardings=replicated)(variables, state_key)


def abstract_state(model, tx, shape, mesh, extra_inputs=()) -> TrainState:
  """Shapes, dtypes and (replicated) shardings of `init_state`'s result, without computing it."""
  with jax.threefry_partitionable(False):
    shapes = jax.eval_shape(_init_fn(model, tx, shape, extra_inputs), jax.random.PRNGKey(0))
  replicated = parallel.replicated(mesh)
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated),
                      shapes)
