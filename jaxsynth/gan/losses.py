"""GAN losses of Huang & Jafari 2021 (BAGAN-GP), their equation numbers beside each term.

Critic scores D are unconstrained reals. The logistic form writes log D(x) of the paper as
log sigmoid(D(x)), so -log sigmoid(d) = softplus(-d) and -log(1 - sigmoid(d)) = softplus(d).

- `logistic` (cDRAGAN eq. 12-13, BAGAN-GP eq. 14-15):
    L_D = softplus(-D(x_r, y_r)) + softplus(D(G(z, y_f), y_f)) [+ softplus(D(x_r, y_wrong))]
          + lambda GP,          L_G = softplus(-D(G(z, y_f), y_f))
- `wasserstein` (WGAN-GP eq. 8-9):
    L_D = D(G(z, y_f), y_f) - D(x_r, y_r) + lambda GP,     L_G = -D(G(z, y_f), y_f)
- `classifier` (BAGAN, Mariani et al. 2018 §4): a K + 1 way critic; sparse cross-entropy of
  the real images to their classes and the fake ones to `fake` (index K), over the joint batch;
  the generator's cross-entropy of D(G(z_c)) to c.
(means over the batch). GP (eq. 7-8) = E[(||grad_x D(x^, y_r)||_2 - 1)^2] on the interpolates
x^ = alpha x_r + (1 - alpha) x_g ("model interpolation").
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import optax

ADVERSARIAL = ("logistic", "wasserstein", "classifier")
ALPHAS = ("uniform", "normal")


def interpolation_weights(key, batch: int, mode: str = "uniform") -> jax.Array:
  """alpha per image, (B, 1, 1, 1): U(0, 1) as in WGAN-GP and the paper, or N(0, 1) as the
  authors' code draws it (`normal`: interpolates then also extrapolate past x_r and x_g)."""
  shape = (batch, 1, 1, 1)
  if mode == "uniform":
    return jax.random.uniform(key, shape)
  if mode == "normal":
    return jax.random.normal(key, shape)
  raise ValueError(f"unknown interpolation mode {mode!r}; use one of {', '.join(ALPHAS)}")


def gradient_penalty(critic: Callable, real, fake, labels, alpha) -> jax.Array:
  """Eq. 7-8: mean over images of (||d critic(x^, y) / d x^||_2 - 1)^2, x^ = a x_r + (1-a) x_g.

  `critic(x, labels)` -> (B,) scores with no coupling between images (no batch norm), so the
  gradient of their sum gives each image's own gradient.
  """
  x_hat = alpha * real + (1.0 - alpha) * fake
  grads = jax.grad(lambda x: jnp.sum(critic(x, labels)))(x_hat)
  norms = jnp.sqrt(jnp.sum(jnp.square(grads), axis=tuple(range(1, grads.ndim))) + 1e-12)
  return jnp.mean((norms - 1.0) ** 2)


def critic_terms(adversarial: str, d_real, d_fake, d_wrong=None) -> jax.Array:
  """The critic's adversarial loss without the penalty (eq. 8, 12 or 14)."""
  if adversarial == "logistic":
    loss = jnp.mean(jax.nn.softplus(-d_real)) + jnp.mean(jax.nn.softplus(d_fake))
    if d_wrong is not None:
      loss = loss + jnp.mean(jax.nn.softplus(d_wrong))
    return loss
  if adversarial == "wasserstein":
    if d_wrong is not None:
      raise ValueError("the wrong-label term belongs to the logistic loss (eq. 14)")
    return jnp.mean(d_fake) - jnp.mean(d_real)
  raise ValueError(f"unknown adversarial loss {adversarial!r}; use one of "
                   f"{', '.join(ADVERSARIAL)}")


def generator_terms(adversarial: str, d_fake) -> jax.Array:
  """The generator's loss (eq. 9, 13 or 15)."""
  if adversarial == "logistic":
    return jnp.mean(jax.nn.softplus(-d_fake))
  if adversarial == "wasserstein":
    return -jnp.mean(d_fake)
  raise ValueError(f"unknown adversarial loss {adversarial!r}; use one of "
                   f"{', '.join(ADVERSARIAL)}")


def balanced_labels(key, batch: int, num_classes: int) -> jax.Array:
  """Fake labels y_f ~ U{0, ..., K-1}, whatever the real class balance (BAGAN's balanced
  training, eq. 14)."""
  return jax.random.randint(key, (batch,), 0, num_classes)


def wrong_labels(key, labels, num_classes: int) -> jax.Array:
  """y_wrong for eq. 14: uniform over the K-1 classes other than each real label.

  The paper writes y_wrong ~ U{0, ..., K-1} and the authors' code draws it so, which makes
  1/K of the "wrong" pairs right ones that the critic is then taught to reject; drawing from
  the other classes keeps the term what the paper says it is, "wrongly classified cases".
  """
  shift = jax.random.randint(key, labels.shape, 1, num_classes)
  return (labels + shift) % num_classes


def classifier_critic_terms(logits_real, labels, logits_fake, num_classes: int) -> jax.Array:
  """BAGAN's discriminator loss: cross-entropy over the joint batch of real images (their
  class) and fake ones (class `fake` = num_classes)."""
  fake_labels = jnp.full(logits_fake.shape[:1], num_classes)
  logits = jnp.concatenate([logits_real, logits_fake])
  targets = jnp.concatenate([labels, fake_labels])
  return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, targets))


def classifier_generator_terms(logits_fake, labels) -> jax.Array:
  """BAGAN's generator loss: cross-entropy of the critic's logits on G(z_c) to class c."""
  return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits_fake, labels))
