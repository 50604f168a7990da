"""Noise schedules against their closed forms, ε/x₀/v conversions, and the training losses."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsynth.diffusion import losses, schedules
from jaxsynth.errors import ConfigError


def _np(schedule, name):
  return np.asarray(getattr(schedule, name), np.float64)


def test_linear_schedule_closed_form():
  s = schedules.make_schedule("linear", 1000)
  betas = np.linspace(1e-4, 0.02, 1000)
  np.testing.assert_allclose(_np(s, "betas"), betas, rtol=1e-6)
  abar = np.cumprod(1 - betas)
  np.testing.assert_allclose(_np(s, "alphas_cumprod"), abar, rtol=1e-5)
  np.testing.assert_allclose(_np(s, "sqrt_alphas_cumprod"), np.sqrt(abar), rtol=1e-5)
  np.testing.assert_allclose(_np(s, "sqrt_one_minus_alphas_cumprod"), np.sqrt(1 - abar),
                             rtol=1e-5)
  np.testing.assert_allclose(_np(s, "log_snr"), np.log(abar / (1 - abar)), rtol=1e-5, atol=1e-5)
  assert s.num_timesteps == 1000 and abar[-1] < 1e-4
  # Any T: both ends scaled by 1000/T (improved DDPM), so the total noise stays the same.
  s100 = schedules.make_schedule("linear", 100)
  np.testing.assert_allclose(_np(s100, "betas"), np.linspace(1e-3, 0.2, 100), rtol=1e-6)
  raw = schedules.linear_betas(100, 1e-4, 0.02, rescale=False)
  np.testing.assert_allclose(raw, np.linspace(1e-4, 0.02, 100))


def test_cosine_schedule_closed_form():
  T, s_off = 1000, 0.008
  s = schedules.make_schedule("cosine", T)
  f = lambda t: np.cos((t / T + s_off) / (1 + s_off) * np.pi / 2) ** 2
  t = np.arange(1, T + 1)
  closed = f(t) / f(0)                    # ᾱ at index t−1 (the paper's ᾱ_t)
  betas = _np(s, "betas")
  assert betas.max() <= 0.999 + 1e-7 and betas.min() > 0
  assert np.isclose(betas[-1], 0.999)     # the last step is clipped (ᾱ_T would be 0)
  unclipped = 1 - closed[1:] / closed[:-1] < 0.999
  first_clip = int(np.argmin(np.concatenate([[True], unclipped])))
  first_clip = first_clip if first_clip > 0 else T
  np.testing.assert_allclose(_np(s, "alphas_cumprod")[:first_clip - 1], closed[:first_clip - 1],
                             rtol=2e-5, atol=1e-7)
  np.testing.assert_allclose(betas[:first_clip - 1],
                             np.minimum(1 - closed[:first_clip - 1] / np.concatenate(
                                 [[1.0], closed[:first_clip - 2]]), 0.999), rtol=1e-4, atol=1e-7)


def test_scaled_linear_schedule_closed_form():
  s = schedules.make_schedule("scaled_linear", 500, beta_start=0.00085, beta_end=0.012)
  np.testing.assert_allclose(np.sqrt(_np(s, "betas")),
                             np.linspace(np.sqrt(0.00085), np.sqrt(0.012), 500), rtol=1e-6)


@pytest.mark.parametrize("name", ["linear", "cosine", "scaled_linear"])
def test_posterior_tables_equal_gaussian_conditioning(name):
  """β̃_t and μ̃_t from Bayes' rule on q(x_{t−1}|x₀) q(x_t|x_{t−1}), derived independently."""
  s = schedules.make_schedule(name, 200)
  betas = _np(s, "betas")
  abar = np.cumprod(1 - betas)
  abar_prev = np.concatenate([[1.0], abar[:-1]])
  t = np.arange(1, 200)   # t = 0 has a point-mass posterior (x_{−1} = x₀)
  precision = 1 / (1 - abar_prev[t]) + (1 - betas[t]) / betas[t]
  var = 1 / precision
  np.testing.assert_allclose(_np(s, "posterior_variance")[t], var, rtol=1e-4)
  np.testing.assert_allclose(_np(s, "posterior_mean_coef1")[t],
                             var * np.sqrt(abar_prev[t]) / (1 - abar_prev[t]), rtol=1e-4)
  np.testing.assert_allclose(_np(s, "posterior_mean_coef2")[t],
                             var * np.sqrt(1 - betas[t]) / betas[t], rtol=1e-4)
  assert _np(s, "posterior_variance")[0] == 0.0
  assert np.all(np.isfinite(_np(s, "posterior_log_variance_clipped")))
  assert np.all(np.diff(_np(s, "log_snr")) < 0)


def test_schedule_is_a_pytree_usable_in_jit():
  s = schedules.make_schedule("cosine", 50)
  leaves = jax.tree.leaves(s)
  assert len(leaves) == 13 and all(l.shape == (50,) for l in leaves)
  got = jax.jit(lambda sch, t: sch.snr(t))(s, jnp.array([0, 49]))
  np.testing.assert_allclose(got, np.exp(_np(s, "log_snr")[[0, 49]]), rtol=1e-5)


def test_bad_schedules_are_clear_errors():
  with pytest.raises(ConfigError, match="unknown noise schedule"):
    schedules.make_schedule("sigmoid", 100)
  with pytest.raises(ConfigError, match="betas in"):
    schedules.schedule_from_betas([0.1, 1.0])
  with pytest.raises(ConfigError, match="prediction"):
    schedules.check_prediction("score")


def test_eps_x0_v_conversions_round_trip():
  s = schedules.make_schedule("cosine", 1000)
  k1, k2 = jax.random.split(jax.random.key(0))
  x0 = jax.random.normal(k1, (64, 4, 4, 2))
  eps = jax.random.normal(k2, x0.shape)
  t = jnp.linspace(0, 950, 64).astype(jnp.int32)
  a, sg = s.coefs(t, 4)
  x_t = losses.q_sample(s, x0, t, eps)
  np.testing.assert_allclose(x_t, a * x0 + sg * eps, rtol=1e-6)
  v = schedules.v_from_eps_x0(eps, x0, a, sg)
  tol = dict(atol=2e-4, rtol=1e-4)
  np.testing.assert_allclose(schedules.x0_from_eps(x_t, eps, a, sg), x0, **tol)
  np.testing.assert_allclose(schedules.eps_from_x0(x_t, x0, a, sg), eps, **tol)
  np.testing.assert_allclose(schedules.x0_from_v(x_t, v, a, sg), x0, **tol)
  np.testing.assert_allclose(schedules.eps_from_v(x_t, v, a, sg), eps, **tol)
  for prediction in schedules.PREDICTIONS:
    target = schedules.prediction_target(x0, eps, a, sg, prediction)
    e, x = schedules.output_to_eps_x0(target, x_t, a, sg, prediction)
    np.testing.assert_allclose(e, eps, **tol)
    np.testing.assert_allclose(x, x0, **tol)


# --- losses -------------------------------------------------------------------------------------

def _oracle(schedule, x0, prediction, delta=0.0):
  """A denoiser that knows x₀: outputs the exact target for x̂₀ = x₀ + delta."""
  def apply_fn(params, x_t, t, labels):
    a, sg = schedule.coefs(t, x_t.ndim)
    x0_hat = x0 + delta
    eps_hat = (x_t - a * x0_hat) / sg
    return schedules.prediction_target(x0_hat, eps_hat, a, sg, prediction)
  return apply_fn


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_loss_is_zero_for_a_perfect_denoiser(prediction):
  s = schedules.make_schedule("linear", 1000)
  x0 = jax.random.normal(jax.random.key(1), (32, 4, 4, 1))
  loss = losses.diffusion_loss(_oracle(s, x0, prediction), None, x0, None,
                               jax.random.key(2), s, prediction=prediction)
  assert float(loss) < 1e-6
  zero = lambda p, x, t, l: jnp.zeros_like(x)
  loss0 = losses.diffusion_loss(zero, None, x0, None, jax.random.key(2), s, prediction="x0")
  np.testing.assert_allclose(float(loss0), float(jnp.mean(x0 ** 2)), rtol=1e-5)


def test_min_snr_weighting_is_the_same_objective_in_every_parameterisation():
  """Min-SNR-γ weights the x₀ error by min(SNR, γ) whether the net predicts ε, x₀ or v."""
  s = schedules.make_schedule("linear", 1000)
  x0 = jax.random.normal(jax.random.key(3), (64, 4, 4, 1))
  delta = 0.1 * jax.random.normal(jax.random.key(4), x0.shape)
  key = jax.random.key(5)
  per = {p: losses.per_sample_loss(_oracle(s, x0, p, delta), None, x0, None, key, s,
                                   prediction=p, weighting="min_snr", snr_gamma=5.0)
         for p in schedules.PREDICTIONS}
  np.testing.assert_allclose(per["eps"], per["x0"], rtol=2e-3)
  np.testing.assert_allclose(per["v"], per["x0"], rtol=2e-3)
  # And equals min(SNR, γ)·‖Δx₀‖² computed directly.
  t = jax.random.randint(jax.random.split(key, 3)[0], (64,), 0, 1000)
  direct = jnp.minimum(s.snr(t), 5.0) * jnp.mean((delta ** 2).reshape(64, -1), axis=1)
  np.testing.assert_allclose(per["x0"], direct, rtol=1e-5)
  w = losses.snr_weight(jnp.array([0.1, 5.0, 100.0]), "eps", "min_snr", 5.0)
  np.testing.assert_allclose(w, [1.0, 1.0, 0.05], rtol=1e-6)
  with pytest.raises(ConfigError, match="weighting"):
    losses.snr_weight(jnp.ones(2), "eps", "p2")


def test_label_dropout_uses_the_null_label():
  labels = jnp.arange(10000) % 3
  key = jax.random.key(6)
  assert np.array_equal(losses.drop_labels(key, labels, 3, 0.0), labels)
  assert np.all(np.asarray(losses.drop_labels(key, labels, 3, 1.0)) == 3)
  dropped = np.asarray(losses.drop_labels(key, labels, 3, 0.3))
  kept = dropped != 3
  assert abs((~kept).mean() - 0.3) < 0.02
  assert np.array_equal(dropped[kept], np.asarray(labels)[kept])
  # diffusion_loss hands the dropped labels to the denoiser: x₀ = 0 and an x₀-prediction of
  # 1 where the label is null make the loss the dropped fraction.
  x0 = jnp.zeros((4000, 2, 2, 1))
  apply_fn = lambda p, x, t, l: jnp.broadcast_to((l == 3)[:, None, None, None], x.shape) * 1.0
  loss = losses.diffusion_loss(apply_fn, None, x0, jnp.zeros(4000, jnp.int32), key,
                               schedules.make_schedule("linear", 100), prediction="x0",
                               label_dropout=0.25, num_classes=3)
  assert abs(float(loss) - 0.25) < 0.03
  with pytest.raises(ConfigError, match="num_classes"):
    losses.diffusion_loss(apply_fn, None, x0, jnp.zeros(4000, jnp.int32), key,
                          schedules.make_schedule("linear", 100), label_dropout=0.1)


def test_diffusion_loss_jits_and_differentiates():
  import flax.linen as nn
  s = schedules.make_schedule("linear", 100)

  class Net(nn.Module):
    @nn.compact
    def __call__(self, x, t, labels):
      emb = nn.Embed(3, 4)(labels) + nn.Dense(4)(t[:, None] / 100.0)
      return nn.Conv(1, (3, 3))(x + nn.Dense(1)(emb)[:, None, None, :])

  net = Net()
  x0 = jnp.ones((8, 4, 4, 1))
  labels = jnp.arange(8) % 2
  params = jax.jit(net.init)(jax.random.key(0), x0, jnp.zeros(8, jnp.int32), labels)
  fn = jax.jit(jax.value_and_grad(lambda p, k: losses.diffusion_loss(
      net.apply, p, x0, labels, k, s, prediction="v", weighting="min_snr",
      label_dropout=0.1, num_classes=2)))
  loss, grads = fn(params, jax.random.key(1))
  assert np.isfinite(float(loss)) and loss.shape == ()
  assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))
