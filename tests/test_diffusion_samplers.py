"""DDPM, DDIM and DPM-Solver++(2M) against an analytic denoiser on Gaussian data, and the
shared helpers of the other diffusion sampler tests (guidance, program).

For x₀ ~ N(μ, s₀² I) and x_t = α x₀ + σ ε (α = √ᾱ_t, σ = √(1 − ᾱ_t)), x_t ~ N(α μ,
(α² s₀² + σ²) I) and (ε, x_t) are jointly Gaussian with Cov(ε, x_t) = σ I, so the exact
(MMSE) denoiser is ε*(x_t, t) = E[ε | x_t] = σ (x_t − α μ) / (α² s₀² + σ²), and
x̂₀ = E[x₀ | x_t] = μ + α s₀² (x_t − α μ) / (α² s₀² + σ²).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsynth.diffusion import samplers, schedules
from jaxsynth.diffusion.samplers import make_sampler
from jaxsynth.errors import ConfigError

T = 1000
SCHEDULE = schedules.make_schedule("linear", T)
SCHEDULE50 = schedules.make_schedule("linear", 50)
MEANS = np.array([-0.5, 0.5, 0.0], np.float32)   # class 0, class 1, null label (index 2)
S0 = 0.5
SHAPE = (4, 4, 2)   # 1024 samples x 32 values: the std is measured to ~0.5%


_CACHE = {}


def _cached(key, build):
  """Memoises test denoisers and samplers by identity, so each compiles once per shape."""
  if key not in _CACHE:
    _CACHE[key] = build()
  return _CACHE[key]


def gaussian_eps(schedule=SCHEDULE, s0=S0, means=tuple(MEANS)):
  """The exact ε* for x₀ | y ~ N(means[y], s₀² I); params unused."""
  return _cached(("eps", id(schedule), s0, means), lambda: _gaussian_eps(schedule, s0, means))


def _gaussian_eps(schedule, s0, means):
  means = jnp.asarray(means, jnp.float32)

  def apply_fn(params, x, t, labels):
    a, sg = schedule.coefs(t, x.ndim)
    mu = means[labels].reshape((-1,) + (1,) * (x.ndim - 1))
    return sg * (x - a * mu) / (a * a * s0 * s0 + sg * sg)
  return apply_fn


def affine_prediction(sampler, num_steps, mu, schedule=SCHEDULE, s0=S0):
  """(p, q) with output = p + q·z for the deterministic samplers (everything is linear in z)."""
  abar = np.cumprod(1 - np.asarray(schedule.betas, np.float64))
  taus = samplers.timesteps(schedule.num_timesteps, num_steps)[::-1]

  def x0_coefs(t):   # x̂₀ = c0 + c1·x_t
    a, sg = np.sqrt(abar[t]), np.sqrt(1 - abar[t])
    r2 = a * a * s0 * s0 + sg * sg
    return mu - a * a * s0 * s0 * mu / r2, a * s0 * s0 / r2

  p, q, prev = 0.0, 1.0, None
  alpha, sigma = np.sqrt(abar[taus]), np.sqrt(1 - abar[taus])
  lam = np.log(alpha / sigma)
  for i, t in enumerate(taus):
    c0, c1 = x0_coefs(t)
    xp, xq = c0 + c1 * p, c1 * q
    if i == len(taus) - 1:
      return xp, xq
    if sampler == "ddim":   # x' = √ᾱ' x̂₀ + √(1 − ᾱ') ε̂, ε̂ = (x − α x̂₀)/σ
      ep, eq = (p - alpha[i] * xp) / sigma[i], (q - alpha[i] * xq) / sigma[i]
      p, q = alpha[i + 1] * xp + sigma[i + 1] * ep, alpha[i + 1] * xq + sigma[i + 1] * eq
    else:                   # DPM-Solver++(2M)
      h = lam[i + 1] - lam[i]
      dp, dq = xp, xq
      if i > 0:
        r = (lam[i] - lam[i - 1]) / h
        dp, dq = xp + (xp - prev[0]) / (2 * r), xq + (xq - prev[1]) / (2 * r)
      prev = (xp, xq)
      cx, cd = sigma[i + 1] / sigma[i], -alpha[i + 1] * np.expm1(-h)
      p, q = cx * p + cd * dp, cx * q + cd * dq


def cached_sampler(apply_fn, schedule, shape, **kw):
  """One jitted sampler per configuration, shared by the tests (compiles once per shape)."""
  key = ("sampler", id(apply_fn), id(schedule), shape, tuple(sorted(kw.items())))
  return _cached(key, lambda: make_sampler(apply_fn, schedule, shape, **kw))


def draw(n=1024, labels=None, key=0, **kw):
  labels = np.arange(n) % 2 if labels is None else labels
  classifier_params = kw.pop("classifier_params", None)
  fn = cached_sampler(kw.pop("apply_fn", gaussian_eps()), kw.pop("schedule", SCHEDULE),
                      kw.pop("shape", SHAPE), **kw)
  out = fn(None, jnp.asarray(labels, jnp.int32), jnp.arange(n), jax.random.key(key),
           classifier_params)
  return np.asarray(out), labels


def check_moments(x, labels, std=S0, mean_tol=0.02, std_tol=0.03):
  for y in (0, 1):
    xs = x[labels == y]
    assert abs(xs.mean() - MEANS[y]) < mean_tol, (y, xs.mean())
    assert abs(xs.std() / std - 1) < std_tol, (y, xs.std())


def initial_noise(n, key=0, shape=SHAPE):
  keys = samplers.sample_keys(jax.random.key(key), jnp.arange(n))
  return np.asarray(samplers.sample_noise(keys, 0, shape))


class TinyDenoiser(nn.Module):
  """A small nonlinear class-conditional ε-net with a learned null label (num_classes + 1)."""
  num_classes: int = 2

  @nn.compact
  def __call__(self, x, t, labels):
    emb = nn.Embed(self.num_classes + 1, 8)(labels)
    emb = nn.silu(emb + nn.Dense(8)(t[:, None].astype(jnp.float32) / 1000.0))
    h = nn.Conv(8, (3, 3))(x) + nn.Dense(8)(emb)[:, None, None, :]
    return nn.Conv(x.shape[-1], (3, 3))(nn.silu(h))


@pytest.fixture(scope="module")
def tiny():
  net = TinyDenoiser()
  params = jax.jit(net.init)(jax.random.key(0), jnp.zeros((1, 4, 4, 1)),
                             jnp.zeros(1, jnp.int32), jnp.zeros(1, jnp.int32))
  return net, params


# --- the analytic Gaussian case ------------------------------------------------------------------

@pytest.mark.parametrize("variance", ["fixed_small", "fixed_large"])
def test_ddpm_lands_on_the_data_distribution(variance):
  x, labels = draw(sampler="ddpm", ddpm_variance=variance)
  check_moments(x, labels)


@pytest.mark.parametrize("sampler", ["ddim", "dpm_solver_pp_2m"])
def test_deterministic_samplers_follow_the_exact_linear_gaussian_recurrence(sampler):
  """Every sample equals p + q·z, with (p, q) from the sampler's update run on paper."""
  n = 1024
  x, labels = draw(n, sampler=sampler, num_steps=20)
  z = initial_noise(n)
  for y in (0, 1):
    p, q = affine_prediction(sampler, 20, float(MEANS[y]))
    np.testing.assert_allclose(x[labels == y], p + q * z[labels == y], atol=2e-4, rtol=1e-4)


def test_ddim_lands_on_the_data_distribution():
  # DDIM's discretisation shrinks the std a little (on paper: −1.2% at 250 steps, −0.6%
  # at 500; η = 1: −2.8%, −1.5%), hence the step counts and the tolerances here.
  x, labels = draw(sampler="ddim", num_steps=500)
  check_moments(x, labels, std_tol=0.025)
  x, labels = draw(sampler="ddim", num_steps=500, eta=1.0)
  check_moments(x, labels, std_tol=0.035)
  x, labels = draw(sampler="ddim", num_steps=250, spacing="quadratic")
  check_moments(x, labels, std_tol=0.025)


def test_dpm_solver_agrees_with_ddim_and_is_better_at_few_steps():
  ddim, labels = draw(sampler="ddim", num_steps=250)
  dpm, _ = draw(sampler="dpm_solver_pp_2m", num_steps=250)
  assert np.mean(np.abs(ddim - dpm)) < 0.01 and np.max(np.abs(ddim - dpm)) < 0.05
  check_moments(dpm, labels)
  # At 20 steps the 2nd-order solver is much closer to the true s₀ than DDIM (1st order).
  err = {}
  for name in ("ddim", "dpm_solver_pp_2m"):
    x, labels = draw(sampler=name, num_steps=20)
    err[name] = abs(np.mean([x[labels == y].std() for y in (0, 1)]) / S0 - 1)
  assert err["dpm_solver_pp_2m"] < 0.06 and err["dpm_solver_pp_2m"] < 0.5 * err["ddim"], err


def test_ddpm_equals_ddim_with_eta_one_on_every_step():
  s = schedules.make_schedule("cosine", 100)
  kw = dict(apply_fn=gaussian_eps(s), schedule=s, n=64)
  ddpm, _ = draw(sampler="ddpm", **kw)
  ddim, _ = draw(sampler="ddim", num_steps=100, eta=1.0, **kw)
  np.testing.assert_allclose(ddpm, ddim, atol=2e-4)


@pytest.mark.parametrize("prediction", ["x0", "v"])
def test_x0_and_v_models_sample_like_the_eps_model(prediction):
  eps_fn = gaussian_eps()

  def apply_fn(params, x, t, labels):
    a, sg = SCHEDULE.coefs(t, x.ndim)
    eps = eps_fn(params, x, t, labels)
    x0 = schedules.x0_from_eps(x, eps, a, sg)
    return schedules.prediction_target(x0, eps, a, sg, prediction)

  ref, _ = draw(sampler="ddim", num_steps=20)
  got, _ = draw(sampler="ddim", num_steps=20, apply_fn=apply_fn,
                prediction=prediction)
  np.testing.assert_allclose(got, ref, atol=2e-3)


def test_clip_x0_bounds_the_samples():
  x, _ = draw(sampler="ddim", num_steps=20, clip_x0=0.25)
  assert np.abs(x).max() <= 0.25 + 1e-6


def test_bad_sampler_options_are_clear_errors():
  with pytest.raises(ConfigError, match="sampler"):
    make_sampler(gaussian_eps(), SCHEDULE, SHAPE, sampler="euler")
  with pytest.raises(ConfigError, match="num_classes"):
    make_sampler(gaussian_eps(), SCHEDULE, SHAPE, cfg_scale=3.0)
  with pytest.raises(ConfigError, match="num_steps"):
    make_sampler(gaussian_eps(), SCHEDULE, SHAPE, num_steps=T + 1)
  with pytest.raises(ConfigError, match="spacing"):
    make_sampler(gaussian_eps(), SCHEDULE, SHAPE, spacing="cubic")
  with pytest.raises(ConfigError, match="unknown sampler option.*guidance"):
    make_sampler(gaussian_eps(), SCHEDULE, SHAPE, guidance=3.0)


def test_timestep_spacings():
  for spacing in ("uniform", "quadratic"):
    for steps in (1, 7, 50, 999, 1000):
      taus = samplers.timesteps(1000, steps, spacing)
      assert taus.size == steps and taus[-1] == 999 and taus[0] >= 0
      assert np.all(np.diff(taus) > 0)
  np.testing.assert_array_equal(samplers.timesteps(1000, 10), np.arange(99, 1000, 100))
  quad = samplers.timesteps(1000, 10, "quadratic")
  assert np.all(np.diff(np.diff(quad)) > 0)   # denser at low noise
