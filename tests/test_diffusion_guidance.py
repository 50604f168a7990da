"""Classifier-free guidance (DiffuPT eq. 5, one batched forward) and classifier guidance
(IOIS eq. 4) on the analytic Gaussian denoiser and a tiny conv net."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsynth.diffusion import samplers, schedules
from jaxsynth.diffusion.samplers import ClassifierGuidance, make_sampler
from tests.test_diffusion_samplers import (SCHEDULE, SHAPE, draw, gaussian_eps,
                                           tiny)  # noqa: F401  (tiny is a fixture)


def test_cfg_with_w_zero_equals_the_conditional_model(tiny):
  net, params = tiny
  labels, idx = jnp.arange(8) % 2, jnp.arange(8)
  s = schedules.make_schedule("linear", 50)
  common = dict(sampler="ddim", num_steps=8, eta=1.0, num_classes=2, clip_x0=1.0)
  plain = make_sampler(net.apply, s, (4, 4, 1), **common)
  cfg0 = make_sampler(net.apply, s, (4, 4, 1), cfg_scale=0.0, **common)
  key = jax.random.key(3)
  np.testing.assert_allclose(cfg0(params, labels, idx, key), plain(params, labels, idx, key),
                             atol=1e-5)
  cfg3 = make_sampler(net.apply, s, (4, 4, 1), cfg_scale=3.0, **common)
  assert not np.allclose(cfg3(params, labels, idx, key), plain(params, labels, idx, key))


def test_cfg_is_diffupt_eq5_from_one_batched_forward(tiny):
  net, params = tiny
  calls = []

  def apply_fn(p, x, t, labels):
    calls.append(x.shape[0])
    return net.apply(p, x, t, labels)

  x = jax.random.normal(jax.random.key(1), (6, 4, 4, 1))
  labels = jnp.array([0, 1, 1, 0, 1, 0])
  a, sg = SCHEDULE.sqrt_alphas_cumprod[500], SCHEDULE.sqrt_one_minus_alphas_cumprod[500]
  cfg = samplers.SamplerConfig(cfg_scale=3.0, num_classes=2)
  eps, x0 = jax.jit(lambda p, x: samplers.guided_eps_x0(apply_fn, p, x, 500, labels, a, sg,
                                                         cfg))(params, x)
  assert calls == [12]    # one forward of cond and uncond together
  t = jnp.full((6,), 500)
  two = jax.jit(lambda p, x: (net.apply(p, x, t, labels), net.apply(p, x, t, jnp.full((6,), 2))))
  eps_c, eps_u = two(params, x)
  np.testing.assert_allclose(eps, 4.0 * eps_c - 3.0 * eps_u, atol=1e-5)
  np.testing.assert_allclose(x0, (x - sg * eps) / a, atol=1e-4)


def _logistic(weight):
  """A Flax logistic classifier, logits = x·W + b, here the Bayes classifier of N(±0.5, 0.5²)."""
  model = nn.Dense(2)
  n_in = int(np.prod(SHAPE))
  params = {"params": {"kernel": jnp.stack([-jnp.full(n_in, weight), jnp.full(n_in, weight)], 1),
                       "bias": jnp.zeros(2)}}
  return (lambda p, x: model.apply(p, x.reshape(x.shape[0], -1))), params


def _class_posterior(x, y):
  apply_fn, params = _logistic(4.0)   # 2·0.5/0.5² = 4: exact p(y|x) for the two classes
  return np.asarray(jax.nn.softmax(apply_fn(params, jnp.asarray(x))))[np.arange(len(y)), y]


@pytest.mark.parametrize("grad_on,dn", [("x_t", False), ("x0", True)])
def test_zero_gradient_classifier_equals_no_guidance(grad_on, dn):
  flat = lambda p, x: jnp.zeros((x.shape[0], 2)) + 0.0 * jnp.sum(x) + p
  guide = ClassifierGuidance(flat, scale=10.0, grad_on=grad_on, sqrt_one_minus_alpha_bar=dn)
  ref, _ = draw(sampler="ddim", num_steps=20, eta=1.0)
  got, _ = draw(sampler="ddim", num_steps=20, eta=1.0, classifier=guide,
                classifier_params=jnp.ones(2))
  # The same up to float rounding (XLA fuses "ε − s·0" differently from "ε").
  np.testing.assert_allclose(got, ref, atol=1e-6)


@pytest.mark.parametrize("sampler,grad_on,dn", [("ddim", "x_t", False),
                                                ("dpm_solver_pp_2m", "x0", True)])
def test_real_classifier_guidance_raises_class_probability(sampler, grad_on, dn):
  """Unconditional model of N(0, s₀²); guiding toward y raises the classifier's p(y|x)."""
  uncond = gaussian_eps(means=(0.0, 0.0, 0.0))
  apply_fn, params = _logistic(4.0)
  n = 1024
  y = np.arange(n) % 2
  base, _ = draw(n, labels=y, sampler=sampler, num_steps=20, apply_fn=uncond)
  guide = ClassifierGuidance(apply_fn, scale=1.0, grad_on=grad_on, sqrt_one_minus_alpha_bar=dn)
  guided, _ = draw(n, labels=y, sampler=sampler, num_steps=20, apply_fn=uncond,
                   classifier=guide, classifier_params=params)
  p_base, p_guided = _class_posterior(base, y).mean(), _class_posterior(guided, y).mean()
  assert abs(p_base - 0.5) < 0.05 and p_guided > p_base + 0.15, (p_base, p_guided)
  # Guiding toward class 1 moves the samples to the positive side, class 0 to the negative.
  assert guided[y == 1].mean() > 0.1 and guided[y == 0].mean() < -0.1


def test_classifier_params_can_change_without_recompiling():
  uncond = gaussian_eps(means=(0.0, 0.0, 0.0))
  apply_fn, params = _logistic(4.0)
  fn = make_sampler(uncond, SCHEDULE, SHAPE, sampler="ddim", num_steps=5,
                    classifier=ClassifierGuidance(apply_fn), classifier_params=params)
  labels, idx, key = jnp.ones(8, jnp.int32), jnp.arange(8), jax.random.key(0)
  a = fn(None, labels, idx, key)
  b = fn(None, labels, idx, key, jax.tree.map(lambda w: -w, params))
  assert a.mean() > 0 > b.mean()
  assert fn._cache_size() == 2   # the default (closed-over) params, then one traced-params program
  fn(None, labels, idx, key, params)
  assert fn._cache_size() == 2

