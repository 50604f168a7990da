"""Samplers: DDPM ancestral, DDIM (η, uniform/quadratic spacing) and DPM-Solver++(2M), with
classifier-free guidance (one batched forward) and classifier guidance; each sampler is one
compiled program (the whole loop is a `lax.fori_loop` inside `jit`).

The denoiser is any `apply_fn(params, x_t, t, labels) -> output` with x_t (B, H, W, C) float,
t (B,) int32 in [0, T) and labels (B,) int32 in [0, num_classes] (index num_classes is the
learned null label); output is ε, x₀ or v per `prediction`.

Randomness: sample i draws everything from key_i = fold_in(root_key, global_index_i): its
initial noise from fold_in(key_i, 0) and the noise of loop step s (0-based) from
fold_in(key_i, s + 1). No key depends on the batch size, the batch position, the device count
or where a sweep resumed, so sample i is the same image whichever batch it is drawn in (up to
the denoiser's own batch-size-dependent rounding, if any).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding

from jaxsynth.diffusion.schedules import Schedule, check_prediction, output_to_eps_x0
from jaxsynth.errors import ConfigError
from jaxsynth.training.parallel import batch_sharding

SAMPLERS = ("ddpm", "ddim", "dpm_solver_pp_2m")
SPACINGS = ("uniform", "quadratic")
DDPM_VARIANCES = ("fixed_small", "fixed_large")
GRAD_ON = ("x_t", "x0")


@dataclasses.dataclass(frozen=True)
class ClassifierGuidance:
  """Classifier guidance (IOIS eq. 4): ε̂ = ε − s·∇ log p_φ(y|x), from any Flax classifier."""
  apply_fn: Callable            # (params, x) -> logits; (params, x, t) if takes_timestep
  scale: float = 1.0            # s
  sqrt_one_minus_alpha_bar: bool = False  # Dhariwal & Nichol 2021 Alg. 2: s·√(1 − ᾱ_t)·∇
  grad_on: str = "x_t"          # "x_t": ∇ at x_t;  "x0": ∇ log p(y|x̂₀) at the predicted x̂₀
  takes_timestep: bool = False  # a noise-aware classifier that also takes t (B,)


@dataclasses.dataclass(frozen=True)
class SamplerConfig:
  """The static choices of a sampler (changing one compiles a new program)."""
  sampler: str = "ddim"         # ddpm | ddim | dpm_solver_pp_2m
  num_steps: int = 50           # model evaluations (ddpm always uses all T)
  eta: float = 0.0              # DDIM η: 0 deterministic, 1 = DDPM-like ancestral noise
  spacing: str = "uniform"      # timestep spacing for ddim / dpm_solver_pp_2m
  prediction: str = "eps"       # what the denoiser outputs: eps | x0 | v
  cfg_scale: float | None = None  # w of DiffuPT eq. 5; None = no unconditional forward at all
  num_classes: int | None = None  # the null label's index (needed by cfg_scale)
  clip_x0: float | None = None  # clip x̂₀ to [−c, c] each step (c = 1 for images in [−1, 1])
  ddpm_variance: str = "fixed_small"  # β̃_t (posterior) or β_t (Ho et al. 2020 §3.2)

  def validate(self, num_timesteps: int) -> "SamplerConfig":
    """Raises ConfigError for an unknown or inconsistent choice; returns self."""
    def choose(key, value, options):
      if value not in options:
        raise ConfigError(f"sampler option '{key}' = {value!r} is unknown; choose one of "
                          f"{', '.join(options)}")
    choose("sampler", self.sampler, SAMPLERS)
    choose("spacing", self.spacing, SPACINGS)
    choose("ddpm_variance", self.ddpm_variance, DDPM_VARIANCES)
    check_prediction(self.prediction)
    if self.sampler != "ddpm" and not 1 <= int(self.num_steps) <= num_timesteps:
      raise ConfigError(f"sampler option 'num_steps' = {self.num_steps} must be in "
                        f"[1, {num_timesteps}] (the schedule's T)")
    if self.eta < 0:
      raise ConfigError(f"sampler option 'eta' must be >= 0, got {self.eta}")
    if self.cfg_scale is not None and self.num_classes is None:
      raise ConfigError("sampler option 'cfg_scale' needs 'num_classes' (the null label index)")
    if self.clip_x0 is not None and self.clip_x0 <= 0:
      raise ConfigError(f"sampler option 'clip_x0' must be > 0 or None, got {self.clip_x0}")
    return self


def timesteps(num_timesteps: int, num_steps: int, spacing: str = "uniform") -> np.ndarray:
  """Increasing distinct integer timesteps τ₁ < … < τ_S = T − 1 (the first step is pure noise)."""
  if spacing not in SPACINGS:
    raise ConfigError(f"unknown timestep spacing {spacing!r}; choose one of {', '.join(SPACINGS)}")
  T, S = int(num_timesteps), int(num_steps)
  if not 1 <= S <= T:
    raise ConfigError(f"num_steps = {S} must be in [1, {T}]")
  frac = np.arange(1, S + 1, dtype=np.float64) / S
  if spacing == "uniform":
    # τ_i = round(i·T/S) − 1: always starts from t = T − 1 (Lin et al. 2024 "trailing"
    # spacing; DDIM's own "leading" range(0, T, T/S) never visits the noisiest step).
    steps = np.round(frac * T).astype(np.int64) - 1
  else:
    # DDIM's quadratic spacing (Song et al. 2021, τ_i ∝ i²), dense at low noise.
    steps = np.ceil(frac ** 2 * T).astype(np.int64) - 1
  # Make them strictly increasing (rounding can repeat small values), keeping τ_S = T − 1.
  steps = np.clip(steps, 0, T - 1)
  for i in range(1, S):
    steps[i] = max(steps[i], steps[i - 1] + 1)
  for i in range(S - 2, -1, -1):
    steps[i] = min(steps[i], steps[i + 1] - 1)
  return steps


# --- randomness: one key per sample from its global index -------------------------------------

def sample_keys(root_key: jax.Array, global_indices: jnp.ndarray) -> jax.Array:
  """key_i = fold_in(root_key, global_index_i) for each sample."""
  return jax.vmap(jax.random.fold_in, in_axes=(None, 0))(root_key, global_indices)


def sample_noise(keys: jax.Array, slot, shape: tuple[int, ...]) -> jnp.ndarray:
  """Standard normal (B, *shape): sample i's draw from fold_in(key_i, slot), batch-independent."""
  return jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(k, slot), shape,
                                              jnp.float32))(keys)


# --- the guided denoiser: one call gives (ε̂, x̂₀) at one timestep ------------------------------

def guided_eps_x0(apply_fn: Callable, params: Any, x: jnp.ndarray, t, labels,
                  alpha, sigma, config: SamplerConfig,
                  classifier: ClassifierGuidance | None = None, classifier_params: Any = None,
                  constrain: Callable = lambda a: a):
  """(ε̂, x̂₀) at integer t, with CFG (DiffuPT eq. 5) and classifier guidance (IOIS eq. 4)."""
  batch = x.shape[0]
  convert = lambda out, z: output_to_eps_x0(out.astype(jnp.float32), z, alpha, sigma,
                                            config.prediction)
  if config.cfg_scale is None:
    t_b = jnp.full((batch,), t, jnp.int32)
    eps, x0 = convert(apply_fn(params, x, t_b, labels), x)
  else:
    # One batched forward of cond and uncond. They are interleaved per sample
    # ([c₀, u₀, c₁, u₁, …], i.e. stack on a new axis 1 and merge it into the batch) rather
    # than [cond; uncond] end to end: with the batch sharded over devices each device then
    # holds both halves of its own samples, so no data moves between devices.
    w = config.cfg_scale
    x2 = constrain(jnp.stack([x, x], axis=1).reshape((2 * batch,) + x.shape[1:]))
    null = jnp.full_like(labels, config.num_classes)
    l2 = jnp.stack([labels, null], axis=1).reshape(2 * batch)
    t2 = jnp.full((2 * batch,), t, jnp.int32)
    out = apply_fn(params, x2, t2, l2).reshape((batch, 2) + x.shape[1:])
    eps_c, x0_c = convert(out[:, 0], x)
    eps_u, x0_u = convert(out[:, 1], x)
    # DiffuPT eq. 5: ε̃ = (1 + w)·ε(z, c) − w·ε(z, ∅). x̂₀ is affine in ε with the same x_t,
    # and the weights sum to 1, so the same combination of x̂₀ is exactly x̂₀(ε̃).
    eps = (1.0 + w) * eps_c - w * eps_u
    x0 = (1.0 + w) * x0_c - w * x0_u
  if classifier is not None:
    if classifier.grad_on == "x_t":
      point = x
    else:  # ∇ taken at x̂₀, the denoiser held fixed (no backprop through the network)
      point = jax.lax.stop_gradient(x0)
    t_b = jnp.full((batch,), t, jnp.int32)

    def log_prob(z):
      logits = (classifier.apply_fn(classifier_params, z, t_b) if classifier.takes_timestep
                else classifier.apply_fn(classifier_params, z))
      logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
      return jnp.sum(jnp.take_along_axis(logp, labels[:, None].astype(jnp.int32), axis=-1))

    grad = jax.grad(log_prob)(point)
    scale = classifier.scale * (sigma if classifier.sqrt_one_minus_alpha_bar else 1.0)
    eps = eps - scale * grad                      # IOIS eq. 4 (× √(1 − ᾱ_t) in D&N Alg. 2)
    x0 = x0 + (sigma / alpha) * scale * grad      # x̂₀ = (x_t − σ ε̂)/α, kept consistent
  if config.clip_x0 is not None:
    x0 = jnp.clip(x0, -config.clip_x0, config.clip_x0)
    eps = (x - alpha * x0) / sigma
  return eps, x0


# --- the samplers: each a fori_loop over precomputed per-step tables -----------------------------

def _ddpm(denoise, schedule: Schedule, config: SamplerConfig, x, keys, constrain):
  """DDPM ancestral sampling over all T steps (Ho et al. 2020 Alg. 2, eq. 7 posterior)."""
  T = schedule.num_timesteps
  if config.ddpm_variance == "fixed_small":
    log_var = schedule.posterior_log_variance_clipped    # σ_t² = β̃_t
  else:  # σ_t² = β_t, with β̃_1 at t = 0 as in Ho et al.'s code (noise is off there anyway)
    log_var = jnp.log(jnp.concatenate([schedule.posterior_variance[1:2], schedule.betas[1:]]))

  def body(i, x):
    t = T - 1 - i
    eps, x0 = denoise(x, t, schedule.sqrt_alphas_cumprod[t],
                      schedule.sqrt_one_minus_alphas_cumprod[t])
    # μ̃_t(x_t, x̂₀) = coef1·x̂₀ + coef2·x_t (DDPM eq. 7), x_{t−1} = μ̃ + σ_t z, no z at t = 0.
    mean = schedule.posterior_mean_coef1[t] * x0 + schedule.posterior_mean_coef2[t] * x
    std = jnp.where(t > 0, jnp.exp(0.5 * log_var[t]), 0.0)
    return constrain(mean + std * sample_noise(keys, i + 1, x.shape[1:]))

  return jax.lax.fori_loop(0, T, body, x)


def _ddim(denoise, schedule: Schedule, config: SamplerConfig, x, keys, constrain):
  """DDIM over the spaced timesteps (Song et al. 2021 eq. 12), η-controlled noise."""
  taus = timesteps(schedule.num_timesteps, config.num_steps, config.spacing)[::-1].copy()
  S = taus.size
  abar = schedule.alphas_cumprod
  t_seq = jnp.asarray(taus, jnp.int32)
  abar_t = abar[t_seq]
  # After the last step (from t = τ₁) the target is clean data: ᾱ_prev = 1, so x = x̂₀.
  abar_prev = jnp.concatenate([abar[t_seq[1:]], jnp.ones((1,), abar.dtype)])
  # Eq. 16: σ_τ(η) = η √((1 − ᾱ_prev)/(1 − ᾱ_t)) √(1 − ᾱ_t/ᾱ_prev).
  sig = config.eta * jnp.sqrt((1 - abar_prev) / (1 - abar_t) * (1 - abar_t / abar_prev))
  dir_coef = jnp.sqrt(jnp.maximum(1 - abar_prev - sig ** 2, 0.0))

  def body(i, x):
    eps, x0 = denoise(x, t_seq[i], jnp.sqrt(abar_t[i]), jnp.sqrt(1 - abar_t[i]))
    # Eq. 12: x_prev = √ᾱ_prev·x̂₀ + √(1 − ᾱ_prev − σ²)·ε̂ + σ·z.
    x = jnp.sqrt(abar_prev[i]) * x0 + dir_coef[i] * eps
    if config.eta > 0:
      x = x + sig[i] * sample_noise(keys, i + 1, x.shape[1:])
    return constrain(x)

  return jax.lax.fori_loop(0, S, body, x)


def _dpm_solver_pp_2m(denoise, schedule: Schedule, config: SamplerConfig, x, keys, constrain):
  """DPM-Solver++(2M), multistep 2nd-order data-prediction solver (Lu et al. 2022 Alg. 2)."""
  taus = timesteps(schedule.num_timesteps, config.num_steps, config.spacing)[::-1].copy()
  S = taus.size
  a_all, s_all = schedule.sqrt_alphas_cumprod, schedule.sqrt_one_minus_alphas_cumprod
  t_seq = jnp.asarray(taus, jnp.int32)
  alpha, sigma = a_all[t_seq], s_all[t_seq]
  lam = jnp.log(alpha) - jnp.log(sigma)                    # λ_t = log(α_t/σ_t)
  # Step i goes t_i → t_{i+1}; the last step (from t = τ₁) goes to clean data, σ = 0, where
  # λ = ∞: x = (σ_next/σ)·x − α_next(e^{−h} − 1)·D reduces to x = D = x̂₀ (first order; as
  # diffusers' final_sigmas_type="zero". A 2nd-order jump into t = 0 instead, with its huge
  # h, over-extrapolates: +24% std on the Gaussian test at 20 steps).
  h = lam[1:] - lam[:-1]                                   # h_i = λ_{t_{i+1}} − λ_{t_i}
  x_coef = jnp.concatenate([sigma[1:] / sigma[:-1], jnp.zeros((1,))])
  d_coef = jnp.concatenate([-alpha[1:] * jnp.expm1(-h), jnp.ones((1,))])
  # D_i = (1 + 1/(2r_i))·x̂₀_i − 1/(2r_i)·x̂₀_{i−1} = x̂₀_i + (x̂₀_i − x̂₀_{i−1})/(2r_i),
  # r_i = h_{i−1}/h_i; the first step is first order (Alg. 2 line 2), and so is the final one.
  second = np.ones(S, bool)
  second[0] = second[-1] = False
  h_prev = jnp.concatenate([jnp.ones((1,)), h])[:S]      # h_{i−1} (unused where first order)
  h_cur = jnp.concatenate([h, jnp.ones((1,))])
  d_weight = jnp.where(jnp.asarray(second), h_cur / (2.0 * h_prev), 0.0)

  def body(i, carry):
    x, x0_prev = carry
    _, x0 = denoise(x, t_seq[i], alpha[i], sigma[i])
    d = x0 + d_weight[i] * (x0 - x0_prev)
    return constrain(x_coef[i] * x + d_coef[i] * d), x0

  x, _ = jax.lax.fori_loop(0, S, body, (x, jnp.zeros_like(x)))
  return x


_LOOPS = {"ddpm": _ddpm, "ddim": _ddim, "dpm_solver_pp_2m": _dpm_solver_pp_2m}


def sample(apply_fn: Callable, params: Any, schedule: Schedule, labels, global_indices,
           root_key: jax.Array, *, image_shape: tuple[int, ...],
           config: SamplerConfig = SamplerConfig(),
           classifier: ClassifierGuidance | None = None, classifier_params: Any = None,
           sharding: NamedSharding | None = None) -> jnp.ndarray:
  """Draws samples (B, *image_shape) float32; traceable, so it runs inside a caller's jit."""
  config.validate(schedule.num_timesteps)
  if sharding is not None:
    constrain = lambda a: jax.lax.with_sharding_constraint(a, sharding)
  else:
    constrain = lambda a: a
  if (config.cfg_scale is not None or classifier is not None) and labels is None:
    raise ConfigError("guided sampling needs class labels")
  if classifier is not None and classifier.grad_on not in GRAD_ON:
    raise ConfigError(f"classifier guidance 'grad_on' = {classifier.grad_on!r} is unknown; "
                      f"choose one of {', '.join(GRAD_ON)}")
  global_indices = constrain(jnp.asarray(global_indices, jnp.int32))
  if labels is not None:
    labels = constrain(jnp.asarray(labels, jnp.int32))
  keys = sample_keys(root_key, global_indices)
  x = constrain(sample_noise(keys, 0, tuple(image_shape)))

  def denoise(x, t, alpha, sigma):
    return guided_eps_x0(apply_fn, params, x, t, labels, alpha, sigma, config,
                         classifier, classifier_params, constrain)

  return _LOOPS[config.sampler](denoise, schedule, config, x, keys, constrain)


def make_sampler(apply_fn: Callable, schedule: Schedule, image_shape: tuple[int, ...], *,
                 classifier: ClassifierGuidance | None = None, classifier_params: Any = None,
                 mesh: Mesh | None = None, sharding: NamedSharding | None = None,
                 **config) -> Callable:
  """Jitted fn(params, labels, global_indices, root_key, classifier_params=None) -> images."""
  # `config` holds SamplerConfig's fields (sampler, num_steps, eta, spacing, prediction,
  # cfg_scale, num_classes, clip_x0, ddpm_variance), e.g. `**config.sampler`. With a mesh
  # (batch on its `data` axis) or an explicit batch sharding, the batch stays sharded inside
  # the loop and the output has that sharding. `classifier_params` given here are the
  # default; passing them at call time (same structure) reuses one compiled program, so a
  # classifier still being trained can guide without recompiling.
  #
  # Nothing is donated: the only buffer the size of the images is the noise, created inside
  # the program, and XLA updates the loop carry in place; labels and indices cannot alias the
  # float images (other dtype and shape), so donating them would only raise warnings.
  fields = {f.name for f in dataclasses.fields(SamplerConfig)}
  unknown = sorted(set(config) - fields)
  if unknown:
    raise ConfigError(f"unknown sampler option(s) {', '.join(unknown)}; the options are "
                      f"{', '.join(sorted(fields))}")
  cfg = SamplerConfig(**config).validate(schedule.num_timesteps)
  if classifier is not None and not isinstance(classifier, ClassifierGuidance):
    raise ConfigError("classifier must be a ClassifierGuidance(apply_fn, scale, ...)")
  if sharding is None and mesh is not None:
    sharding = batch_sharding(mesh)
  default_classifier_params = classifier_params

  def run(params, labels, global_indices, root_key, classifier_params=None):
    if classifier is not None and classifier_params is None:
      classifier_params = default_classifier_params
    if sharding is not None:
      batch, devices = global_indices.shape[0], sharding.mesh.devices.size
      if batch % devices:
        raise ConfigError(f"the sampling batch ({batch}) must be a multiple of the {devices} "
                          "devices it is sharded over")
    return sample(apply_fn, params, schedule, labels, global_indices, root_key,
                  image_shape=tuple(image_shape), config=cfg, classifier=classifier,
                  classifier_params=classifier_params, sharding=sharding)

  if sharding is None:
    return jax.jit(run)
  return jax.jit(run, out_shardings=sharding)
