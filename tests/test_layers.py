"""The im2col and row-tap convolutions equal XLA's convolution, values and gradients; the
bfloat16 path (float32 accumulation) matches float32 within bf16 rounding; GroupNorm = flax's."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsynth.models.layers import (Conv, Dense, GroupNorm, accumulates_in_float32,
                                    concatenate_channels, dense, group_norm, im2col_conv,
                                    row_conv, stack_channels, upsample_conv, upsample_nearest)


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


def _xla_conv(x, w, stride, pad):
  return jax.lax.conv_general_dilated(x, w, (stride, stride), ((pad, pad), (pad, pad)),
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"))


@pytest.mark.parametrize("merge_rows", [True, False])
@pytest.mark.parametrize("k,pad", [(3, 1), (3, 0), (1, 0), (5, 2)])
def test_row_conv_matches_xla_conv_and_its_gradient(k, pad, merge_rows):
  rng = np.random.default_rng(2)
  x = jnp.asarray(rng.normal(size=(2, 7, 6, 5)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(k, k, 5, 4)), jnp.float32)
  ours = lambda x, w: row_conv(x, w, ((pad, pad), (pad, pad)), merge_rows=merge_rows)
  xla = lambda x, w: _xla_conv(x, w, 1, pad)
  np.testing.assert_allclose(ours(x, w), xla(x, w), rtol=1e-5, atol=1e-5)
  grad = lambda f: jax.grad(lambda x, w: jnp.sum(f(x, w) ** 2), argnums=(0, 1))(x, w)
  for a, b in zip(grad(ours), grad(xla)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("hw,k,stride,pad", [(8, 3, 1, 1), (8, 3, 2, 1), (6, 1, 1, 0), (3, 3, 1, 1)])
def test_bfloat16_conv_matches_float32_xla_conv_values_and_gradients(hw, k, stride, pad):
  """The bf16 path (row_conv / im2col / dot with float32 accumulation on CPU) against XLA's
  float32 conv of the same bf16-rounded operands: equal to bf16 output rounding."""
  assert accumulates_in_float32(jnp.bfloat16)               # the tests run on CPU
  rng = np.random.default_rng(3)
  x = jnp.asarray(rng.normal(size=(2, hw, hw, 16)), jnp.float32)
  module = Conv(24, (k, k), stride, padding=pad, dtype=jnp.bfloat16)
  params = module.init(jax.random.PRNGKey(0), x)
  params = jax.tree_util.tree_map(lambda p: p + 0.1, params)          # a nonzero bias
  round16 = lambda a: a.astype(jnp.bfloat16).astype(jnp.float32)

  def ours(params, x):
    return module.apply(params, x).astype(jnp.float32)

  def reference(params, x):
    p = params["params"]
    return _xla_conv(round16(x), round16(p["kernel"]), stride, pad) + round16(p["bias"])

  out, ref = ours(params, x), reference(params, x)
  assert module.apply(params, x).dtype == jnp.bfloat16
  scale = float(jnp.abs(ref).max())
  np.testing.assert_allclose(out, ref, rtol=2 ** -7, atol=2 ** -7 * scale)
  cotangent = jnp.asarray(rng.normal(size=ref.shape), jnp.float32)
  grad = lambda f: jax.grad(lambda p, x: jnp.sum(f(p, x) * cotangent), argnums=(0, 1))(params, x)
  for a, b in zip(jax.tree_util.tree_leaves(grad(ours)), jax.tree_util.tree_leaves(grad(reference))):
    assert a.dtype == jnp.float32                                    # params and input are f32
    np.testing.assert_allclose(a, b, rtol=2 ** -6, atol=2 ** -6 * float(jnp.abs(b).max()))


def test_upsample_conv_equals_a_conv_of_the_upsampled_map_values_and_gradients():
  """Four 2x2 parity convs on x = the 3x3 conv of nearest-2x-upsampled x (float32: exact)."""
  rng = np.random.default_rng(6)
  x = jnp.asarray(rng.normal(size=(2, 5, 4, 6)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(3, 3, 6, 7)), jnp.float32)
  ours = lambda x, w: upsample_conv(x, w, None)
  direct = lambda x, w: _xla_conv(upsample_nearest(x), w, 1, 1)
  assert ours(x, w).shape == (2, 10, 8, 7)
  np.testing.assert_allclose(ours(x, w), direct(x, w), rtol=1e-5, atol=1e-5)
  grad = lambda f: jax.grad(lambda x, w: jnp.sum(f(x, w) ** 2), argnums=(0, 1))(x, w)
  for a, b in zip(grad(ours), grad(direct)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_upsampling_conv_module_keeps_its_parameters_and_matches_float32_in_bfloat16():
  rng = np.random.default_rng(7)
  x = jnp.asarray(rng.normal(size=(2, 4, 4, 8)), jnp.float32)
  f32, bf16 = (Conv(8, (3, 3), padding=1, upsample=True, dtype=d)
               for d in (jnp.float32, jnp.bfloat16))
  params = jax.tree_util.tree_map(lambda p: p + 0.1, f32.init(jax.random.PRNGKey(0), x))
  plain = Conv(8, (3, 3), padding=1).init(jax.random.PRNGKey(0), upsample_nearest(x))
  assert jax.tree_util.tree_structure(params) == jax.tree_util.tree_structure(plain)
  expected = f32.apply(params, x)
  np.testing.assert_allclose(expected, Conv(8, (3, 3), padding=1).apply(params,
                                                                         upsample_nearest(x)),
                             rtol=1e-6, atol=1e-6)
  out = bf16.apply(params, x)
  assert out.dtype == jnp.bfloat16 and out.shape == (2, 8, 8, 8)
  scale = float(jnp.abs(expected).max())
  np.testing.assert_allclose(out.astype(jnp.float32), expected, rtol=2 ** -6, atol=2 ** -6 * scale)


def test_float32_conv_path_is_unchanged():
  """float32 keeps XLA's conv (and im2col's plain matmul), bit for bit."""
  rng = np.random.default_rng(4)
  x = jnp.asarray(rng.normal(size=(2, 8, 8, 6)), jnp.float32)
  for stride, impl in ((1, "auto"), (1, "xla"), (2, "im2col")):
    module = Conv(7, (3, 3), stride, padding=1, impl=impl)
    params = jax.tree_util.tree_map(lambda p: p + 0.1, module.init(jax.random.PRNGKey(0), x))
    p = params["params"]
    if impl == "im2col":
      padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
      patches = jnp.concatenate([padded[:, i:i + 7:2, j:j + 7:2] for i in range(3)
                                 for j in range(3)], axis=-1)
      expected = patches @ p["kernel"].reshape(54, 7) + p["bias"]
    else:
      expected = _xla_conv(x, p["kernel"], stride, 1) + p["bias"]
    np.testing.assert_array_equal(jax.jit(module.apply)(params, x), jax.jit(lambda: expected)())


@pytest.mark.parametrize("shape,groups", [((2, 8, 8, 64), 32), ((3, 4, 4, 12), 3), ((2, 10, 16), 4)])
def test_group_norm_matches_flax(shape, groups):
  rng = np.random.default_rng(5)
  x = jnp.asarray(rng.normal(size=shape) * 3 + 2, jnp.float32)
  ours, theirs = GroupNorm(groups), nn.GroupNorm(num_groups=groups, epsilon=1e-5)
  params = theirs.init(jax.random.PRNGKey(0), x)
  params = jax.tree_util.tree_map(lambda p: p + jnp.arange(p.size).reshape(p.shape) / p.size,
                                  params)
  assert jax.tree_util.tree_structure(ours.init(jax.random.PRNGKey(0), x)) == \
      jax.tree_util.tree_structure(params)
  np.testing.assert_allclose(ours.apply(params, x), theirs.apply(params, x), rtol=1e-4, atol=1e-4)
  cot = jnp.asarray(rng.normal(size=shape), jnp.float32)
  grad = lambda m: jax.grad(lambda p, x: jnp.sum(m.apply(p, x) * cot), argnums=(0, 1))(params, x)
  for a, b in zip(jax.tree_util.tree_leaves(grad(ours)), jax.tree_util.tree_leaves(grad(theirs))):
    np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-3)
  # bfloat16 activations: float32 statistics, output within bf16 rounding of flax's
  low = GroupNorm(groups, dtype=jnp.bfloat16).apply(params, x.astype(jnp.bfloat16))
  ref = nn.GroupNorm(num_groups=groups, epsilon=1e-5).apply(
      params, x.astype(jnp.bfloat16).astype(jnp.float32))
  assert low.dtype == jnp.bfloat16
  np.testing.assert_allclose(low.astype(jnp.float32), ref, rtol=2 ** -7,
                             atol=2 ** -7 * float(jnp.abs(ref).max()))


def test_group_norm_choice_is_ours_on_cpu_in_every_dtype():
  assert group_norm(jnp.float32) is GroupNorm                       # the tests run on CPU
  assert group_norm(jnp.bfloat16) is GroupNorm


def test_dense_accumulates_in_float32_with_flax_parameters():
  assert dense(jnp.float32) is nn.Dense
  assert dense(jnp.bfloat16) is Dense                               # CPU
  rng = np.random.default_rng(6)
  x = jnp.asarray(rng.normal(size=(4, 10, 24)), jnp.float32)
  params = nn.Dense(16).init(jax.random.PRNGKey(0), x)
  params = jax.tree_util.tree_map(lambda p: p + 0.1, params)
  ours = Dense(16, dtype=jnp.bfloat16)
  assert jax.tree_util.tree_structure(ours.init(jax.random.PRNGKey(0), x)) == \
      jax.tree_util.tree_structure(params)
  out = ours.apply(params, x)
  assert out.dtype == jnp.float32
  # The reference: the same bf16-rounded operands, multiplied in float32.
  ref = nn.Dense(16).apply(jax.tree_util.tree_map(
      lambda p: p.astype(jnp.bfloat16).astype(jnp.float32) if p.ndim == 2 else p, params),
      x.astype(jnp.bfloat16).astype(jnp.float32))
  np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)


def test_channel_stacking_and_bit_concatenation_equal_jnp_concatenate_with_gradients():
  rng = np.random.default_rng(5)
  parts = [jnp.asarray(rng.normal(size=(2, 3, 4, 6)), jnp.bfloat16) for _ in range(3)]
  np.testing.assert_array_equal(stack_channels(parts), jnp.concatenate(parts, axis=-1))
  uneven = [parts[0], jnp.asarray(rng.normal(size=(2, 3, 4, 2)), jnp.bfloat16)]
  ours = concatenate_channels(uneven)
  assert ours.dtype == jnp.bfloat16
  np.testing.assert_array_equal(ours, jnp.concatenate(uneven, axis=-1))
  weights = jnp.asarray(rng.normal(size=ours.shape), jnp.float32)
  loss = lambda f: lambda a, b: jnp.sum(f([a, b]).astype(jnp.float32) * weights)
  ours_grad = jax.grad(loss(concatenate_channels), argnums=(0, 1))(*uneven)
  jnp_grad = jax.grad(loss(lambda xs: jnp.concatenate(xs, axis=-1)), argnums=(0, 1))(*uneven)
  for a, b in zip(ours_grad, jnp_grad):
    assert a.dtype == jnp.bfloat16
    np.testing.assert_array_equal(a, b)
  # Other dtypes take jnp.concatenate itself, forward-mode differentiation included.
  x32 = jnp.asarray(rng.normal(size=(2, 3, 4, 2)), jnp.float32)
  out, tangent = jax.jvp(lambda a: concatenate_channels([a, 2 * a]), (x32,), (x32,))
  np.testing.assert_array_equal(tangent, jnp.concatenate([x32, 2 * x32], axis=-1))


@pytest.mark.parametrize("hw,k,stride,pad", [
    (28, 3, 2, 1), (7, 3, 2, 1), (8, 1, 2, 0), (9, 3, 2, 0), (6, 5, 2, 2), (7, 7, 2, 3),
    (10, 3, 3, 1), (2, 3, 2, 1), (1, 3, 2, 1), (5, 3, 1, 1), (4, 3, 1, 0), (3, 1, 1, 0)])
def test_cpu_conv_equals_xla_conv_in_values_and_gradients(hw, k, stride, pad):
  """`cpu_conv` (lax.conv with the strided input gradient by parity and the input kept in its
  own buffer) against lax.conv differentiated by JAX, on odd and tiny maps: to 1e-6 relative."""
  from jaxsynth.models.layers import _lax_conv, cpu_conv
  rng = np.random.default_rng(hw * 31 + k * 7 + stride)
  x = jnp.asarray(rng.normal(size=(2, hw, hw + 1, 3)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(k, k, 3, 4)), jnp.float32)
  strides, padding = (stride, stride), ((pad, pad), (pad, pad))
  loss = lambda conv: lambda x, w: jnp.sum(jnp.sin(conv(x, w, strides, padding)))
  got = jax.jit(jax.value_and_grad(loss(cpu_conv), (0, 1)))(x, w)
  want = jax.jit(jax.value_and_grad(loss(_lax_conv), (0, 1)))(x, w)
  for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
    scale = float(jnp.abs(b).max())
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6 * scale)


def test_strided_input_gradient_is_exact_and_own_buffer_is_the_identity():
  """The parity input gradient equals JAX's (an input-dilated conv) exactly on integers, and
  `own_buffer` passes values and gradients through unchanged."""
  from jaxsynth.models.layers import _lax_conv, own_buffer, strided_input_gradient
  rng = np.random.default_rng(5)
  x = jnp.asarray(rng.integers(-3, 4, size=(2, 11, 9, 3)), jnp.float32)
  w = jnp.asarray(rng.integers(-3, 4, size=(3, 3, 3, 5)), jnp.float32)
  padding = ((1, 0), (2, 1))
  y, vjp = jax.vjp(lambda x: _lax_conv(x, w, (2, 3), padding), x)
  g = jnp.asarray(rng.integers(-3, 4, size=y.shape), jnp.float32)
  np.testing.assert_array_equal(strided_input_gradient(g, w, x.shape[1:3], (2, 3), padding),
                                vjp(g)[0])
  out, own_vjp = jax.vjp(lambda x: own_buffer(x, w), x)
  np.testing.assert_array_equal(out, x)
  np.testing.assert_array_equal(own_vjp(2 * x)[0], 2 * x)
