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


def ema_update(ema, params, decay: float):
  """EMA of parameters: ema <- decay * ema + (1 - decay) * params (decay 0 copies params)."""
  if decay == 0.0:
    return params
  return jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, ema, params)

