"""The im2col convolution equals XLA's convolution, values and gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsynth.models.layers import Conv, im2col_conv


@pytest.mark.parametrize("hw,k,stride,pad", [(2, 3, 1, 1), (5, 3, 2, 1), (8, 1, 2, 0), (7, 7, 2, 3),
                                             (4, 3, 1, 0)])
def test_im2col_matches_xla_conv_and_its_gradient(hw, k, stride, pad):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(3, hw, hw, 4)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(k, k, 4, 5)), jnp.float32)
  padding = ((pad, pad), (pad, pad))

  def xla(x, w):
    return jax.lax.conv_general_dilated(x, w, (stride, stride), padding,
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))

  def ours(x, w):
    return im2col_conv(x, w, (stride, stride), padding)

  np.testing.assert_allclose(ours(x, w), xla(x, w), rtol=1e-5, atol=1e-5)
  grad = lambda f: jax.grad(lambda x, w: jnp.sum(f(x, w) ** 2), argnums=(0, 1))(x, w)
  for a, b in zip(grad(ours), grad(xla)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_conv_module_gives_the_same_output_for_each_impl():
  x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 6, 6, 3)), jnp.float32)
  modules = {impl: Conv(8, (3, 3), 2, padding=1, impl=impl) for impl in ("xla", "im2col", "auto")}
  params = modules["xla"].init(jax.random.PRNGKey(0), x)
  outputs = {impl: m.apply(params, x) for impl, m in modules.items()}
  assert outputs["xla"].shape == (2, 3, 3, 8)
  for impl in ("im2col", "auto"):
    np.testing.assert_allclose(outputs[impl], outputs["xla"], rtol=1e-5, atol=1e-5)
