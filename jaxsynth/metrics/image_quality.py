"""Full-reference image quality: PSNR, SSIM and MS-SSIM, usable both as metrics and (being
differentiable jax) as reconstruction losses.

SSIM (Wang et al. 2004, eq. 13) with an 11x11 Gaussian window of sigma 1.5, K1 = 0.01,
K2 = 0.03, over the 'valid' window positions (as tf.image.ssim and pytorch-msssim), per channel
then averaged. MS-SSIM (Wang et al. 2003, eq. 7): the contrast-structure term at scales
1..M-1 and the full SSIM at scale M, each raised to its weight (the paper's five:
0.0448, 0.2856, 0.3001, 0.2363, 0.1333), 2x2 average pooling between scales. Five scales need
images of at least 161 px (the window must fit the coarsest scale); `scales` takes fewer, with
the first `scales` weights renormalised to sum to one.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


def psnr(x: jax.Array, y: jax.Array, data_range: float = 1.0) -> jax.Array:
  """Peak signal-to-noise ratio in dB per image of (B, H, W, C) batches."""
  mse = jnp.mean((x.astype(jnp.float32) - y.astype(jnp.float32)) ** 2, axis=(1, 2, 3))
  return 10.0 * jnp.log10(data_range ** 2 / jnp.maximum(mse, 1e-12))


def gaussian_window(size: int = 11, sigma: float = 1.5) -> jax.Array:
  """The normalised 1-D Gaussian taps of the SSIM window."""
  r = jnp.arange(size, dtype=jnp.float32) - (size - 1) / 2.0
  g = jnp.exp(-0.5 * (r / sigma) ** 2)
  return g / jnp.sum(g)


def _filter(x: jax.Array, taps: jax.Array) -> jax.Array:
  """Separable 'valid' filtering of (B, H, W, C) by the window's taps along H then W."""
  n = taps.shape[0]
  h = sum(taps[i] * x[:, i:x.shape[1] - n + 1 + i] for i in range(n))
  return sum(taps[i] * h[:, :, i:h.shape[2] - n + 1 + i] for i in range(n))


def _ssim_terms(x, y, data_range, window):
  """Per-image, per-channel mean SSIM and contrast-structure (cs) maps' means, (B, C) each."""
  c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
  mu_x, mu_y = _filter(x, window), _filter(y, window)
  var_x = _filter(x * x, window) - mu_x ** 2
  var_y = _filter(y * y, window) - mu_y ** 2
  cov = _filter(x * y, window) - mu_x * mu_y
  cs = (2.0 * cov + c2) / (var_x + var_y + c2)
  luminance = (2.0 * mu_x * mu_y + c1) / (mu_x ** 2 + mu_y ** 2 + c1)
  return jnp.mean(luminance * cs, axis=(1, 2)), jnp.mean(cs, axis=(1, 2))


def _check_size(shape, window: int, scales: int, name: str) -> None:
  need = (window - 1) * 2 ** (scales - 1) + 1
  if min(shape[1], shape[2]) < need:
    raise ValueError(f"{name}: images of {shape[1]}x{shape[2]} px are too small for an "
                     f"{window}-px window over {scales} scale(s) (need >= {need} px); "
                     "use fewer scales or a smaller window")


def ssim(x: jax.Array, y: jax.Array, data_range: float = 1.0, window: int = 11,
         sigma: float = 1.5) -> jax.Array:
  """Mean SSIM per image of (B, H, W, C) batches with values in a range of `data_range`."""
  _check_size(x.shape, window, 1, "ssim")
  s, _ = _ssim_terms(x.astype(jnp.float32), y.astype(jnp.float32), data_range,
                     gaussian_window(window, sigma))
  return jnp.mean(s, axis=-1)


def _pool2(x: jax.Array) -> jax.Array:
  """2x2 average pooling (odd sizes drop their last row / column)."""
  b, h, w, c = x.shape
  x = x[:, :h - h % 2, :w - w % 2]
  return x.reshape(b, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))


def ms_ssim(x: jax.Array, y: jax.Array, data_range: float = 1.0, scales: int = 5,
            window: int = 11, sigma: float = 1.5) -> jax.Array:
  """Multi-scale SSIM per image (module docstring), `scales` from 1 to 5."""
  if not 1 <= scales <= len(MS_SSIM_WEIGHTS):
    raise ValueError(f"ms_ssim: scales={scales}; use 1 to {len(MS_SSIM_WEIGHTS)}")
  _check_size(x.shape, window, scales, "ms_ssim")
  weights = jnp.asarray(MS_SSIM_WEIGHTS[:scales])
  weights = weights / jnp.sum(weights)
  taps = gaussian_window(window, sigma)
  x, y = x.astype(jnp.float32), y.astype(jnp.float32)
  values = []
  for j in range(scales):
    s, cs = _ssim_terms(x, y, data_range, taps)
    values.append(s if j == scales - 1 else cs)
    x, y = _pool2(x), _pool2(y)
  # Negative cs (anti-correlated structure) would make a fractional power undefined: clip at 0
  # as pytorch-msssim does.
  stacked = jnp.maximum(jnp.stack(values, axis=0), 0.0)             # (scales, B, C)
  return jnp.mean(jnp.prod(stacked ** weights[:, None, None], axis=0), axis=-1)
