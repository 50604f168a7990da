"""Training objectives: q_sample, L_simple for ε/x₀/v prediction with optional SNR weighting,
and label dropout to a learned null label for classifier-free guidance.

The denoiser is any `apply_fn(params, x_t, t, labels, **apply_kwargs) -> output`, with t the
integer timestep (B,) and labels in [0, num_classes] where index `num_classes` is the null
label (so a class-conditional model holds num_classes + 1 label embeddings).
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

from jaxsynth.diffusion.schedules import Schedule, check_prediction, prediction_target
from jaxsynth.errors import ConfigError

WEIGHTINGS = ("none", "min_snr")


def q_sample(schedule: Schedule, x0: jnp.ndarray, t: jnp.ndarray, noise: jnp.ndarray):
  """Draws x_t ~ q(x_t | x₀) = N(√ᾱ_t x₀, (1 − ᾱ_t) I) with the given noise (DDPM eq. 4)."""
  alpha, sigma = schedule.coefs(t, x0.ndim)
  return alpha * x0 + sigma * noise


def snr_weight(snr: jnp.ndarray, prediction: str, weighting: str = "none",
               gamma: float = 5.0) -> jnp.ndarray:
  """Per-sample loss weight; 'min_snr' is Min-SNR-γ (Hang et al. 2023) in the output's space."""
  check_prediction(prediction)
  if weighting not in WEIGHTINGS:
    raise ConfigError(f"unknown diffusion loss weighting {weighting!r}; choose one of "
                      f"{', '.join(WEIGHTINGS)}")
  if weighting == "none":
    return jnp.ones_like(snr)
  # Min-SNR-γ weights the x₀-space error by min(SNR, γ). In ε space ‖Δε‖² = SNR·‖Δx₀‖²
  # and in v space ‖Δv‖² = (SNR + 1)·‖Δx₀‖², so divide by those factors.
  clipped = jnp.minimum(snr, gamma)
  if prediction == "eps":
    return clipped / snr
  if prediction == "x0":
    return clipped
  return clipped / (snr + 1.0)


def drop_labels(key: jax.Array, labels: jnp.ndarray, num_classes: int,
                probability: float) -> jnp.ndarray:
  """Replaces each label by the null label `num_classes` with `probability` (CFG training)."""
  if not 0.0 <= probability <= 1.0:
    raise ConfigError(f"label_dropout must be in [0, 1], got {probability}")
  if probability == 0.0:
    return labels
  drop = jax.random.bernoulli(key, probability, labels.shape)
  return jnp.where(drop, jnp.asarray(num_classes, labels.dtype), labels)


def per_sample_loss(apply_fn: Callable, params: Any, x0: jnp.ndarray, labels, key: jax.Array,
                    schedule: Schedule, *, prediction: str = "eps", weighting: str = "none",
                    snr_gamma: float = 5.0, label_dropout: float = 0.0,
                    num_classes: int | None = None,
                    apply_kwargs: dict | None = None) -> jnp.ndarray:
  """Weighted L_simple of each sample, shape (B,): w(t)·mean‖target − output‖² (DDPM eq. 14)."""
  check_prediction(prediction)
  t_key, noise_key, drop_key = jax.random.split(key, 3)
  batch = x0.shape[0]
  t = jax.random.randint(t_key, (batch,), 0, schedule.num_timesteps)
  noise = jax.random.normal(noise_key, x0.shape, jnp.float32).astype(x0.dtype)
  x_t = q_sample(schedule, x0, t, noise)
  if labels is not None and label_dropout > 0.0:
    if num_classes is None:
      raise ConfigError("label_dropout > 0 needs num_classes (the null label's index)")
    labels = drop_labels(drop_key, labels, num_classes, label_dropout)
  output = apply_fn(params, x_t, t, labels, **(apply_kwargs or {}))
  alpha, sigma = schedule.coefs(t, x0.ndim)
  target = prediction_target(x0, noise, alpha, sigma, prediction)
  error = jnp.square(output.astype(jnp.float32) - target.astype(jnp.float32))
  mse = jnp.mean(error.reshape(batch, -1), axis=1)
  return snr_weight(schedule.snr(t), prediction, weighting, snr_gamma) * mse


def diffusion_loss(apply_fn: Callable, params: Any, x0: jnp.ndarray, labels, key: jax.Array,
                   schedule: Schedule, *, prediction: str = "eps", weighting: str = "none",
                   snr_gamma: float = 5.0, label_dropout: float = 0.0,
                   num_classes: int | None = None, apply_kwargs: dict | None = None):
  """Batch mean of the weighted L_simple: t ~ U{0..T−1}, ε ~ N(0, I), labels dropped to null."""
  return jnp.mean(per_sample_loss(
      apply_fn, params, x0, labels, key, schedule, prediction=prediction, weighting=weighting,
      snr_gamma=snr_gamma, label_dropout=label_dropout, num_classes=num_classes,
      apply_kwargs=apply_kwargs))
