"""Classification losses selected by `config.recipe.name`."""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import optax

from jaxsynth.errors import ConfigError

LossFn = Callable[[jax.Array, jax.Array], jax.Array]


def cross_entropy(num_classes: int, label_smoothing: float = 0.0) -> LossFn:
  """Mean softmax cross-entropy with optional label smoothing (Szegedy et al. 2016)."""

  def loss(logits, labels):
    targets = jax.nn.one_hot(labels, num_classes)
    if label_smoothing > 0:
      targets = optax.smooth_labels(targets, label_smoothing)
    return jnp.mean(optax.softmax_cross_entropy(logits.astype(jnp.float32), targets))

  return loss


LOSSES = {"ce": lambda config, class_counts, num_classes: cross_entropy(
    num_classes, config.train.label_smoothing)}


def make_loss(config, class_counts, num_classes: int) -> LossFn:
  """The loss of `config.recipe.name`, given the training split's class counts."""
  name = config.recipe.name
  if name not in LOSSES:
    raise ConfigError(f"config key 'recipe.name' has unknown value {name!r}; "
                      f"use one of {', '.join(sorted(LOSSES))}")
  return LOSSES[name](config, class_counts, num_classes)
