"""Classification losses selected by `config.recipe.name`.

Every loss is `loss(logits, labels) -> scalar`, the mean over the batch of a per-sample loss.
Class weights are computed once, in float64 numpy, from the training split's class counts.
The sampler recipes (see jaxsynth.recipes.samplers) use plain or weighted cross-entropy here.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxsynth.errors import ConfigError
from jaxsynth.models import heads

LossFn = Callable[[jax.Array, jax.Array], jax.Array]

CLASS_WEIGHTS = ("inverse", "sqrt_inverse", "effective")


def class_weights(kind: str, class_counts, beta: float = 0.9999) -> np.ndarray:
  """Per-class loss weights from training counts, normalised to sum to the number of classes."""
  # inverse: 1/n_c; sqrt_inverse: 1/sqrt(n_c); effective: 1/E_{n_c} (Cui et al. 2019). A class
  # absent from the training split never appears in the loss; it gets weight 0.
  counts = np.asarray(class_counts, dtype=np.float64)
  if kind not in CLASS_WEIGHTS:
    raise ConfigError(f"config key 'recipe.class_weights' has unknown value {kind!r}; "
                      f"use one of {', '.join(CLASS_WEIGHTS)}")
  if not 0.0 <= beta < 1.0:
    raise ConfigError(f"config key 'recipe.beta' has bad value {beta!r}: use a value in [0, 1), "
                      "e.g. 0.9, 0.99, 0.999 or 0.9999")
  present = counts > 0
  if not np.any(present):
    raise ConfigError("class weights need at least one training sample; the training split "
                      "is empty")
  n = np.where(present, counts, 1.0)
  if kind == "inverse":
    raw = 1.0 / n
  elif kind == "sqrt_inverse":
    raw = 1.0 / np.sqrt(n)
  else:
    # Effective number E_n = (1 - beta^n) / (1 - beta) (Cui et al. 2019, Proposition 1); the
    # class-balanced weight is 1 / E_{n_y} (their Sec. 4). beta = 0 gives E_n = 1 for all n.
    raw = (1.0 - beta) / (1.0 - np.power(beta, n))
  raw = np.where(present, raw, 0.0)
  return raw * (len(counts) / raw.sum())


def _targets(labels, num_classes: int, label_smoothing: float) -> jax.Array:
  targets = jax.nn.one_hot(labels, num_classes)
  if label_smoothing > 0:
    targets = optax.smooth_labels(targets, label_smoothing)
  return targets


def cross_entropy(num_classes: int, label_smoothing: float = 0.0) -> LossFn:
  """Mean softmax cross-entropy with optional label smoothing (Szegedy et al. 2016)."""

  def loss(logits, labels):
    targets = _targets(labels, num_classes, label_smoothing)
    return jnp.mean(optax.softmax_cross_entropy(logits.astype(jnp.float32), targets))

  return loss


def weighted_cross_entropy(weights, label_smoothing: float = 0.0) -> LossFn:
  """Mean over the batch of w_y * CE: each sample's loss scaled by its true class's weight."""
  weights = jnp.asarray(weights, jnp.float32)

  def loss(logits, labels):
    targets = _targets(labels, weights.shape[0], label_smoothing)
    per_sample = optax.softmax_cross_entropy(logits.astype(jnp.float32), targets)
    return jnp.mean(weights[labels] * per_sample)

  return loss


def focal(gamma: float, weights=None) -> LossFn:
  """Softmax focal loss -w_y (1 - p_y)^gamma log p_y (Lin et al. 2017, eq. 4; eq. 5 with w)."""
  weights = None if weights is None else jnp.asarray(weights, jnp.float32)

  def loss(logits, labels):
    log_p = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    log_p_y = jnp.take_along_axis(log_p, labels[:, None].astype(jnp.int32), axis=-1)[:, 0]
    per_sample = -log_p_y
    if gamma != 0:
      # 1 - p_y as -expm1(log p_y) keeps precision near p_y = 1; the floor keeps the gradient of
      # x^gamma finite for gamma < 1 where p_y rounds to exactly 1.
      one_minus_p = jnp.maximum(-jnp.expm1(log_p_y), 1e-30)
      per_sample = jnp.power(one_minus_p, gamma) * per_sample
    if weights is not None:
      per_sample = weights[labels] * per_sample
    return jnp.mean(per_sample)

  return loss


def binary_cross_entropy(label_smoothing: float = 0.0) -> LossFn:
  """Mean sigmoid cross-entropy on one logit per sample; label 1 is the sigmoid's class."""

  def loss(logits, labels):
    targets = labels.astype(jnp.float32)
    if label_smoothing > 0:
      targets = targets * (1.0 - label_smoothing) + 0.5 * label_smoothing
    return jnp.mean(optax.sigmoid_binary_cross_entropy(
        logits.astype(jnp.float32).reshape(-1), targets))

  return loss


def _no_label_smoothing(config) -> None:
  if config.train.label_smoothing > 0:
    raise ConfigError(f"config key 'train.label_smoothing' has bad value "
                      f"{config.train.label_smoothing!r}: recipe {config.recipe.name} does not "
                      "smooth labels; set it to 0 or use recipe ce, weighted_ce or bce")


def _gamma(config) -> float:
  gamma = float(config.recipe.gamma)
  if not gamma >= 0:
    raise ConfigError(f"config key 'recipe.gamma' has bad value {gamma!r}: use gamma >= 0 "
                      "(0 is plain cross-entropy; Lin et al. use 2)")
  return gamma


def _ce(config, class_counts, num_classes):
  return cross_entropy(num_classes, config.train.label_smoothing)


def _weighted_ce(config, class_counts, num_classes):
  weights = class_weights(config.recipe.class_weights, class_counts, config.recipe.beta)
  return weighted_cross_entropy(weights, config.train.label_smoothing)


def _bce(config, class_counts, num_classes):
  num_outputs(config, num_classes)  # checks the two classes
  return binary_cross_entropy(config.train.label_smoothing)


def _focal(config, class_counts, num_classes):
  _no_label_smoothing(config)
  return focal(_gamma(config))


def _cb_focal(config, class_counts, num_classes):
  # Class-balanced focal loss (Cui et al. 2019, Sec. 4): effective-number weights x focal.
  _no_label_smoothing(config)
  return focal(_gamma(config), class_weights("effective", class_counts, config.recipe.beta))


LOSSES = {
    "ce": _ce,
    "bce": _bce,
    "weighted_ce": _weighted_ce,
    "focal": _focal,
    "cb_focal": _cb_focal,
    # Sampler recipes (the index order comes from jaxsynth.recipes.samplers):
    "class_balanced_sampler": _ce,
    "sqrt_sampler": _ce,
    "progressive_sampler": _ce,
    "weighted_sampler": _ce,
    "weighted_ce_sampler": _weighted_ce,  # DiffuPT: weighted sampler AND weighted CE
    # Decoupled two-stage recipes (jaxsynth.recipes.decoupled): CE in both stages, as Kang et
    # al. 2020 train them; the stage-2 sampler is class-balanced.
    "crt": _ce,
    "lws": _ce,
    "tau_norm": _ce,
    "multistage_sampler": _ce,
}


def _check_name(config) -> str:
  name = config.recipe.name
  if name not in LOSSES:
    raise ConfigError(f"config key 'recipe.name' has unknown value {name!r}; "
                      f"use one of {', '.join(sorted(LOSSES))}")
  return name


def make_loss(config, class_counts, num_classes: int) -> LossFn:
  """The loss of `config.recipe.name`, given the training split's class counts."""
  return LOSSES[_check_name(config)](config, class_counts, num_classes)


def num_outputs(config, num_classes: int) -> int:
  """Logits the classifier head of `config.recipe.name` needs (models/heads.py)."""
  return heads.num_outputs(_check_name(config), num_classes)


def probabilities(config) -> Callable[[jax.Array], jax.Array]:
  """Logits -> (N, num_classes) probabilities for `config.recipe.name` (models/heads.py)."""
  return heads.probabilities(config.recipe.name)
