"""Shared layers. `Conv` picks the fastest convolution formulation for the backend.

XLA's CPU convolution is pathologically slow on tiny feature maps (a 3x3 conv on a 2x2 map
with 512 channels runs at ~1 GFLOP/s, 60x below a matmul) and in the weight gradient of
strided convs. There an explicit im2col - k*k shifted slices concatenated, then one matmul -
runs near matmul speed. `bench/sampler.py --conv-impl xla|im2col|auto` compares them.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

# im2col is used on CPU for 1x1 convs (a plain matmul; XLA's 1x1 weight gradient is slow), when
# the output map has at most this many pixels, or when a k>1 conv is strided.
IM2COL_MAX_OUTPUT_PIXELS = 16


def im2col_conv(x: jax.Array, kernel: jax.Array, strides: Sequence[int],
                padding: Sequence[tuple[int, int]]) -> jax.Array:
  """NHWC x HWIO convolution as k_h*k_w strided slices concatenated on channels, then a matmul."""
  kh, kw, cin, cout = kernel.shape
  sh, sw = strides
  x = jnp.pad(x, ((0, 0), tuple(padding[0]), tuple(padding[1]), (0, 0)))
  out_h = (x.shape[1] - kh) // sh + 1
  out_w = (x.shape[2] - kw) // sw + 1
  columns = [x[:, i:i + sh * (out_h - 1) + 1:sh, j:j + sw * (out_w - 1) + 1:sw, :]
             for i in range(kh) for j in range(kw)]
  patches = columns[0] if len(columns) == 1 else jnp.concatenate(columns, axis=-1)
  return patches @ kernel.reshape(kh * kw * cin, cout)


def use_im2col(out_pixels: int, strided: bool, kernel_pixels: int, impl: str) -> bool:
  """Whether `Conv` should use im2col for this shape under `impl` (auto | xla | im2col)."""
  if impl != "auto":
    return impl == "im2col"
  if jax.default_backend() != "cpu":
    return False
  return (kernel_pixels == 1 or out_pixels <= IM2COL_MAX_OUTPUT_PIXELS
          or (strided and kernel_pixels > 1))


class Conv(nn.Module):
  """A 2-D NHWC convolution with `nn.Conv`'s parameters (`kernel` HWIO, optional `bias`)."""
  features: int
  kernel_size: Sequence[int] = (3, 3)
  strides: int | Sequence[int] = 1
  padding: int | Sequence[tuple[int, int]] = 0
  use_bias: bool = True
  dtype: jnp.dtype = jnp.float32
  kernel_init: nn.initializers.Initializer = nn.initializers.lecun_normal()
  impl: str = "auto"

  @nn.compact
  def __call__(self, x):
    kh, kw = self.kernel_size
    strides = (self.strides, self.strides) if isinstance(self.strides, int) else tuple(self.strides)
    padding = (((self.padding, self.padding),) * 2 if isinstance(self.padding, int)
               else tuple(tuple(p) for p in self.padding))
    kernel = self.param("kernel", self.kernel_init, (kh, kw, x.shape[-1], self.features))
    x, kernel = x.astype(self.dtype), kernel.astype(self.dtype)
    out_h = (x.shape[1] + sum(padding[0]) - kh) // strides[0] + 1
    out_w = (x.shape[2] + sum(padding[1]) - kw) // strides[1] + 1
    if use_im2col(out_h * out_w, strides != (1, 1), kh * kw, self.impl):
      y = im2col_conv(x, kernel, strides, padding)
    else:
      y = jax.lax.conv_general_dilated(x, kernel, strides, padding,
                                       dimension_numbers=("NHWC", "HWIO", "NHWC"))
    if self.use_bias:
      y = y + self.param("bias", nn.initializers.zeros, (self.features,)).astype(self.dtype)
    return y
