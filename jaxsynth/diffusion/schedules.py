"""Discrete noise schedules (linear, cosine, scaled-linear) as precomputed tables, and the
conversions between the ε-, x₀- and v-parameterisations of a denoiser's output.

Notation (Ho et al. 2020, "DDPM"): q(x_t | x₀) = N(√ᾱ_t x₀, (1 − ᾱ_t) I), t = 0 … T−1
(index t here is the paper's t+1). We write α_t = √ᾱ_t and σ_t = √(1 − ᾱ_t) for the signal
and noise scales ("VP" convention, α² + σ² = 1), so x_t = α_t x₀ + σ_t ε.
"""

from __future__ import annotations

import math

import flax
import jax.numpy as jnp
import numpy as np

from jaxsynth.errors import ConfigError

SCHEDULES = ("linear", "cosine", "scaled_linear")
PREDICTIONS = ("eps", "x0", "v")


def linear_betas(num_timesteps: int, beta_start: float = 1e-4, beta_end: float = 0.02,
                 rescale: bool = True) -> np.ndarray:
  """DDPM's linear β schedule (Ho et al. 2020 §4), rescaled by 1000/T for other T when asked."""
  # Nichol & Dhariwal 2021 (improved DDPM, get_named_beta_schedule): scaling both ends by
  # 1000 / T keeps ᾱ_T ≈ 0 for any T and gives exactly DDPM's 1e-4 … 0.02 at T = 1000.
  scale = 1000.0 / num_timesteps if rescale else 1.0
  return np.linspace(scale * beta_start, scale * beta_end, num_timesteps, dtype=np.float64)


def cosine_alpha_bar(t: np.ndarray, s: float = 0.008) -> np.ndarray:
  """ᾱ(t) = f(t)/f(0), f(t) = cos²(((t + s)/(1 + s))·π/2), t ∈ [0, 1] (Nichol & Dhariwal eq. 17)."""
  f = lambda u: np.cos((u + s) / (1.0 + s) * np.pi / 2.0) ** 2
  return f(np.asarray(t, np.float64)) / f(0.0)


def cosine_betas(num_timesteps: int, s: float = 0.008, max_beta: float = 0.999) -> np.ndarray:
  """Cosine schedule: β_t = min(1 − ᾱ(t+1/T)/ᾱ(t/T), max_beta) (Nichol & Dhariwal 2021 §3.2)."""
  steps = np.arange(num_timesteps + 1, dtype=np.float64) / num_timesteps
  alpha_bar = cosine_alpha_bar(steps, s)
  return np.minimum(1.0 - alpha_bar[1:] / alpha_bar[:-1], max_beta)


def scaled_linear_betas(num_timesteps: int, beta_start: float = 0.00085,
                        beta_end: float = 0.012) -> np.ndarray:
  """Linear in √β (the latent-diffusion / Stable Diffusion schedule): β = linspace(√β₀, √β₁)²."""
  return np.linspace(math.sqrt(beta_start), math.sqrt(beta_end), num_timesteps,
                     dtype=np.float64) ** 2


@flax.struct.dataclass
class Schedule:
  """Precomputed per-timestep tables of a discrete diffusion (a pytree; index with integer t)."""
  betas: jnp.ndarray                     # β_t
  alphas: jnp.ndarray                    # 1 − β_t
  alphas_cumprod: jnp.ndarray            # ᾱ_t = ∏_{s ≤ t} (1 − β_s)
  alphas_cumprod_prev: jnp.ndarray       # ᾱ_{t−1}, with ᾱ_{−1} = 1
  sqrt_alphas_cumprod: jnp.ndarray       # α_t = √ᾱ_t (signal scale)
  sqrt_one_minus_alphas_cumprod: jnp.ndarray  # σ_t = √(1 − ᾱ_t) (noise scale)
  sqrt_recip_alphas_cumprod: jnp.ndarray      # 1/√ᾱ_t
  sqrt_recipm1_alphas_cumprod: jnp.ndarray    # √(1/ᾱ_t − 1)
  posterior_variance: jnp.ndarray        # β̃_t = β_t (1 − ᾱ_{t−1})/(1 − ᾱ_t)   (DDPM eq. 7)
  posterior_log_variance_clipped: jnp.ndarray  # log β̃_t with β̃_0 replaced by β̃_1
  posterior_mean_coef1: jnp.ndarray      # μ̃ = coef1·x₀ + coef2·x_t             (DDPM eq. 7)
  posterior_mean_coef2: jnp.ndarray
  log_snr: jnp.ndarray                   # λ_t = log(ᾱ_t/(1 − ᾱ_t)) = 2 log(α_t/σ_t)
  num_timesteps: int = flax.struct.field(pytree_node=False, default=1000)

  def coefs(self, t: jnp.ndarray, ndim: int) -> tuple[jnp.ndarray, jnp.ndarray]:
    """(α_t, σ_t) for integer timesteps t of shape (B,), broadcastable to a rank-`ndim` batch."""
    shape = (-1,) + (1,) * (ndim - 1)
    return (self.sqrt_alphas_cumprod[t].reshape(shape),
            self.sqrt_one_minus_alphas_cumprod[t].reshape(shape))

  def snr(self, t: jnp.ndarray) -> jnp.ndarray:
    """Signal-to-noise ratio ᾱ_t/(1 − ᾱ_t) at integer timesteps t."""
    return jnp.exp(self.log_snr[t])


def schedule_from_betas(betas) -> Schedule:
  """Builds every table from β (computed in float64, stored as float32)."""
  betas = np.asarray(betas, np.float64)
  if betas.ndim != 1 or betas.size < 2 or np.any(betas <= 0) or np.any(betas >= 1):
    raise ConfigError(f"a noise schedule needs >= 2 betas in (0, 1); got shape {betas.shape}, "
                      f"range [{betas.min() if betas.size else None}, "
                      f"{betas.max() if betas.size else None}]")
  alphas = 1.0 - betas
  abar = np.cumprod(alphas)
  abar_prev = np.concatenate([[1.0], abar[:-1]])
  post_var = betas * (1.0 - abar_prev) / (1.0 - abar)
  tables = dict(
      betas=betas,
      alphas=alphas,
      alphas_cumprod=abar,
      alphas_cumprod_prev=abar_prev,
      sqrt_alphas_cumprod=np.sqrt(abar),
      sqrt_one_minus_alphas_cumprod=np.sqrt(1.0 - abar),
      sqrt_recip_alphas_cumprod=np.sqrt(1.0 / abar),
      sqrt_recipm1_alphas_cumprod=np.sqrt(1.0 / abar - 1.0),
      posterior_variance=post_var,
      # β̃_0 = 0; like DDPM's code, log β̃_0 takes β̃_1 so the log stays finite.
      posterior_log_variance_clipped=np.log(np.concatenate([post_var[1:2], post_var[1:]])),
      posterior_mean_coef1=betas * np.sqrt(abar_prev) / (1.0 - abar),
      posterior_mean_coef2=(1.0 - abar_prev) * np.sqrt(alphas) / (1.0 - abar),
      log_snr=np.log(abar) - np.log1p(-abar),
  )
  return Schedule(**{k: jnp.asarray(v, jnp.float32) for k, v in tables.items()},
                  num_timesteps=int(betas.size))


def make_schedule(name: str, num_timesteps: int = 1000, **kwargs) -> Schedule:
  """A named schedule ('linear' | 'cosine' | 'scaled_linear') with T = num_timesteps."""
  builders = {"linear": linear_betas, "cosine": cosine_betas,
              "scaled_linear": scaled_linear_betas}
  if name not in builders:
    raise ConfigError(f"unknown noise schedule {name!r}; choose one of {', '.join(SCHEDULES)}")
  if int(num_timesteps) < 2:
    raise ConfigError(f"a noise schedule needs num_timesteps >= 2, got {num_timesteps}")
  return schedule_from_betas(builders[name](int(num_timesteps), **kwargs))


# --- ε / x₀ / v conversions: x_t = α x₀ + σ ε and v = α ε − σ x₀ (Salimans & Ho 2022) ---

def x0_from_eps(x_t, eps, alpha, sigma):
  """x₀ = (x_t − σ ε)/α (DDPM eq. 15 rearranged)."""
  return (x_t - sigma * eps) / alpha


def eps_from_x0(x_t, x0, alpha, sigma):
  """ε = (x_t − α x₀)/σ."""
  return (x_t - alpha * x0) / sigma


def v_from_eps_x0(eps, x0, alpha, sigma):
  """v = α ε − σ x₀ (Salimans & Ho 2022, progressive distillation)."""
  return alpha * eps - sigma * x0


def x0_from_v(x_t, v, alpha, sigma):
  """x₀ = α x_t − σ v (uses α² + σ² = 1)."""
  return alpha * x_t - sigma * v


def eps_from_v(x_t, v, alpha, sigma):
  """ε = σ x_t + α v (uses α² + σ² = 1)."""
  return sigma * x_t + alpha * v


def check_prediction(prediction: str) -> str:
  """Returns `prediction` or raises ConfigError naming the valid choices."""
  if prediction not in PREDICTIONS:
    raise ConfigError(f"unknown diffusion prediction {prediction!r}; choose one of "
                      f"{', '.join(PREDICTIONS)}")
  return prediction


def output_to_eps_x0(output, x_t, alpha, sigma, prediction: str):
  """Turns a denoiser output (ε, x₀ or v per `prediction`) into the pair (ε̂, x̂₀)."""
  check_prediction(prediction)
  if prediction == "eps":
    return output, x0_from_eps(x_t, output, alpha, sigma)
  if prediction == "x0":
    return eps_from_x0(x_t, output, alpha, sigma), output
  return eps_from_v(x_t, output, alpha, sigma), x0_from_v(x_t, output, alpha, sigma)


def prediction_target(x0, eps, alpha, sigma, prediction: str):
  """The regression target of a denoiser trained for `prediction`: ε, x₀ or v."""
  check_prediction(prediction)
  if prediction == "eps":
    return eps
  if prediction == "x0":
    return x0
  return v_from_eps_x0(eps, x0, alpha, sigma)
