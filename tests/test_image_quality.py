"""PSNR, SSIM and MS-SSIM against direct float64 computations with scipy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage

from jaxsynth.metrics import image_quality as iq


def _images(seed=0, shape=(2, 24, 24, 3)):
  rng = np.random.default_rng(seed)
  x = ndimage.gaussian_filter(rng.uniform(size=shape), sigma=(0, 2, 2, 0))
  x = (x - x.min()) / (x.max() - x.min())
  y = np.clip(x + rng.normal(0, 0.08, size=shape), 0, 1)
  return x.astype(np.float32), y.astype(np.float32)


def _ssim_reference(x, y, data_range=1.0, cs_only=False):
  """Wang et al. 2004 with an 11-tap Gaussian (sigma 1.5), valid positions, float64."""
  r = np.arange(11) - 5.0
  g = np.exp(-0.5 * (r / 1.5) ** 2)
  g /= g.sum()

  def filt(a):
    a = ndimage.correlate1d(a, g, axis=1, mode="constant")
    a = ndimage.correlate1d(a, g, axis=2, mode="constant")
    return a[:, 5:a.shape[1] - 5, 5:a.shape[2] - 5]

  x, y = x.astype(np.float64), y.astype(np.float64)
  c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
  mx, my = filt(x), filt(y)
  vx, vy, cov = filt(x * x) - mx ** 2, filt(y * y) - my ** 2, filt(x * y) - mx * my
  cs = (2 * cov + c2) / (vx + vy + c2)
  full = (2 * mx * my + c1) / (mx ** 2 + my ** 2 + c1) * cs
  return (cs if cs_only else full).mean(axis=(1, 2))     # (B, C)


def test_psnr_matches_its_formula():
  x, y = _images()
  mse = ((x.astype(np.float64) - y) ** 2).mean(axis=(1, 2, 3))
  np.testing.assert_allclose(iq.psnr(x, y), 10 * np.log10(1.0 / mse), rtol=1e-5)
  np.testing.assert_allclose(iq.psnr(2 * x, 2 * y, data_range=2.0), iq.psnr(x, y), rtol=1e-5)


def test_ssim_matches_a_direct_computation():
  x, y = _images()
  np.testing.assert_allclose(iq.ssim(x, y), _ssim_reference(x, y).mean(axis=-1), atol=2e-5)
  np.testing.assert_allclose(iq.ssim(x, x), np.ones(2), atol=1e-5)


def test_ssim_falls_with_noise_and_respects_data_range():
  x, y = _images()
  _, worse = _images(shape=(2, 24, 24, 3))
  noisier = np.clip(x + np.random.default_rng(3).normal(0, 0.3, size=x.shape), 0, 1)
  assert np.all(np.asarray(iq.ssim(x, noisier)) < np.asarray(iq.ssim(x, y)))
  # Values in [0, 255] with data_range 255 give the same SSIM as [0, 1] with range 1.
  np.testing.assert_allclose(iq.ssim(255 * x, 255 * y, data_range=255.0), iq.ssim(x, y),
                             atol=1e-5)


def test_ms_ssim_combines_the_scales_by_their_weights():
  x, y = _images(shape=(2, 48, 48, 1))
  ref_cs = _ssim_reference(x, y, cs_only=True)
  xp, yp = (a.reshape(2, 24, 2, 24, 2, 1).mean(axis=(2, 4)) for a in (x, y))
  ref_coarse = _ssim_reference(xp, yp)
  w = np.array(iq.MS_SSIM_WEIGHTS[:2]) / np.sum(iq.MS_SSIM_WEIGHTS[:2])
  expected = (np.maximum(ref_cs, 0) ** w[0] * np.maximum(ref_coarse, 0) ** w[1]).mean(axis=-1)
  np.testing.assert_allclose(iq.ms_ssim(x, y, scales=2), expected, atol=2e-5)
  np.testing.assert_allclose(iq.ms_ssim(x, y, scales=1), iq.ssim(x, y), atol=1e-6)
  np.testing.assert_allclose(iq.ms_ssim(x, x, scales=2), np.ones(2), atol=1e-5)


def test_too_small_images_are_a_clear_error():
  x, _ = _images(shape=(1, 40, 40, 1))
  with pytest.raises(ValueError, match=r"too small .*\(need >= 161 px\)"):
    iq.ms_ssim(x, x, scales=5)
  with pytest.raises(ValueError, match="scales=6"):
    iq.ms_ssim(x, x, scales=6)


def test_ssim_is_differentiable_as_a_loss():
  x, y = _images(shape=(1, 16, 16, 1))
  g = jax.grad(lambda a: 1.0 - jnp.mean(iq.ssim(a, jnp.asarray(x))))(jnp.asarray(y))
  assert np.all(np.isfinite(np.asarray(g))) and np.abs(np.asarray(g)).sum() > 0
  # A step down the gradient raises the SSIM.
  assert float(iq.ssim(y - 0.5 * g, x)[0]) > float(iq.ssim(y, x)[0])


def test_ssim_equals_scikit_image():
  from skimage.metrics import structural_similarity
  x, y = _images(seed=4, shape=(3, 32, 32, 3))
  expected = [structural_similarity(a, b, data_range=1.0, channel_axis=-1, gaussian_weights=True,
                                    sigma=1.5, use_sample_covariance=False)
              for a, b in zip(x.astype(np.float64), y.astype(np.float64))]
  np.testing.assert_allclose(iq.ssim(x, y), expected, atol=1e-5)
