"""Classifier heads by recipe: how many logits a head has and how they become probabilities."""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from jaxsynth.errors import ConfigError

SIGMOID_RECIPES = ("bce",)   # one logit, p(class 1) = sigmoid


def num_outputs(recipe: str, num_classes: int) -> int:
  """Logits the head needs: one for `bce` (two classes only), else one per class."""
  if recipe not in SIGMOID_RECIPES:
    return num_classes
  if num_classes != 2:
    raise ConfigError(f"config key 'recipe.name' has bad value {recipe!r}: binary "
                      f"cross-entropy needs 2 classes, the data has {num_classes}; use ce (or "
                      "another softmax recipe) for more than two classes")
  return 1


def probabilities(recipe: str) -> Callable[[jax.Array], jax.Array]:
  """Logits -> (N, num_classes) probabilities: softmax, or [1 - sigmoid, sigmoid] for `bce`."""
  if recipe in SIGMOID_RECIPES:

    def binary(logits):
      p1 = jax.nn.sigmoid(logits.astype(jnp.float32)[:, 0])
      return jnp.stack([1.0 - p1, p1], axis=-1)

    return binary
  return lambda logits: jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
