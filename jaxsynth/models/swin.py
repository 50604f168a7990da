"""Swin Transformer classifiers (Liu et al. 2021): shifted-window attention with relative bias.

Parameter names follow timm's current layout (`layers_i/downsample` opens stage i > 0,
`layers_i/blocks_j/attn/qkv`, `head`), so `convert.swin_from_timm` is a mechanical mapping.
Numerics follow timm: LayerNorm eps 1e-5, exact (erf) GELU, the -100 shifted-window mask,
windows clamped to the feature map (and shifting off) when the map is not larger than the
window, and zero padding to a multiple of the window after the cyclic shift (timm >= 0.9).

Patch and window sizes by image size when `patch_size` / `window_size` are 0 (`auto_sizes`):

  image px   patch  grid (stage 1..4)   window  note
  28         2      14, 7, 4, 2         7       stage 2 is one 7x7 window; 3-4 clamped
  32         2      16, 8, 4, 2         4       shifted windows in stages 1-2
  64         4      16, 8, 4, 2         4
  128        4      32, 16, 8, 4        8
  224        4      56, 28, 14, 7       7       the published Swin setting
  384        4      96, 48, 24, 12      8       (published Swin-B/L-384 use window 12)
  512        4      128, 64, 32, 16     8

Odd maps are zero-padded before patch merging (timm does the same), so any size works.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxsynth.models.layers import Conv

# name -> (embed_dim, depths, num_heads)
VARIANTS = {
    "swin_t": (96, (2, 2, 6, 2), (3, 6, 12, 24)),
    "swin_s": (96, (2, 2, 18, 2), (3, 6, 12, 24)),
    "swin_b": (128, (2, 2, 18, 2), (4, 8, 16, 32)),
    "swin_l": (192, (2, 2, 18, 2), (6, 12, 24, 48)),
}

MASK_VALUE = -100.0   # the official code's additive mask between shifted regions
dense_init = nn.initializers.truncated_normal(0.02)


def auto_patch(image_size: int) -> int:
  """Patch size used when model.patch_size is 0: 2 up to 32 px, else 4."""
  return 2 if image_size <= 32 else 4


def auto_window(grid: int) -> int:
  """Window used when model.window_size is 0, for a stage-1 map of `grid` tokens per side."""
  if grid % 7 == 0:
    return 7
  return 8 if grid >= 32 else 4


def auto_sizes(image_size: int) -> tuple[int, int]:
  """The (patch, window) chosen for a square image when both are 0; see the module doc."""
  patch = auto_patch(image_size)
  return patch, auto_window(-(-image_size // patch))


def window_and_shift(size: Sequence[int], window: int, shift: int):
  """timm's clamp per axis: a map no larger than the window is one window and is not shifted."""
  windows = tuple(min(s, window) for s in size)
  shifts = tuple(0 if s <= w else shift for s, w in zip(size, windows))
  return windows, shifts


def relative_position_index(win_h: int, win_w: int) -> np.ndarray:
  """(N, N) index into the ((2h-1)(2w-1), heads) bias table for window tokens in row-major order."""
  coords = np.stack(np.meshgrid(np.arange(win_h), np.arange(win_w), indexing="ij")).reshape(2, -1)
  rel = (coords[:, :, None] - coords[:, None, :]).transpose(1, 2, 0)
  return (rel[..., 0] + win_h - 1) * (2 * win_w - 1) + (rel[..., 1] + win_w - 1)


def window_partition(x: jax.Array, window: Sequence[int]) -> jax.Array:
  """(B, H, W, C) -> (B, num_windows, wh*ww, C), windows in row-major order."""
  b, h, w, c = x.shape
  wh, ww = window
  x = x.reshape(b, h // wh, wh, w // ww, ww, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, (h // wh) * (w // ww), wh * ww, c)


def window_reverse(windows: jax.Array, window: Sequence[int], h: int, w: int) -> jax.Array:
  """Inverse of `window_partition`: (B, num_windows, wh*ww, C) -> (B, H, W, C)."""
  b, _, _, c = windows.shape
  wh, ww = window
  x = windows.reshape(b, h // wh, w // ww, wh, ww, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, h, w, c)


def shifted_window_mask(h: int, w: int, window: Sequence[int], shift: Sequence[int]) -> np.ndarray:
  """(num_windows, N, N) additive mask: 0 within a shifted region, -100 across regions."""
  img = np.zeros((h, w), np.float32)
  (wh, ww), (sh, sw) = window, shift
  count = 0
  for hs in (slice(0, -wh), slice(-wh, -sh), slice(-sh, None)):
    for ws in (slice(0, -ww), slice(-ww, -sw), slice(-sw, None)):
      img[hs, ws] = count
      count += 1
  regions = window_partition(img[None, :, :, None], window)[0, :, :, 0]
  diff = regions[:, None, :] - regions[:, :, None]
  return np.where(diff != 0, MASK_VALUE, 0.0).astype(np.float32)


def drop_path(x: jax.Array, rate: float, deterministic: bool, rng_fn) -> jax.Array:
  """Stochastic depth: zeroes whole samples of a residual branch with prob `rate`, rescales."""
  if deterministic or rate == 0.0:
    return x
  keep = 1.0 - rate
  mask = jax.random.bernoulli(rng_fn(), keep, (x.shape[0],) + (1,) * (x.ndim - 1))
  return jnp.where(mask, x / keep, 0).astype(x.dtype)


def layer_norm(name: str, dtype, epsilon: float = 1e-5) -> nn.LayerNorm:
  """torch-compatible LayerNorm (eps 1e-5 by default), float32 params."""
  return nn.LayerNorm(epsilon=epsilon, dtype=dtype, name=name)


def attention(q, k, v, bias=None):
  """Softmax attention over (..., heads, N, d): logits in float32 plus an additive bias."""
  scale = jnp.asarray(q.shape[-1] ** -0.5, q.dtype)
  logits = jnp.matmul(q * scale, jnp.swapaxes(k, -1, -2), preferred_element_type=jnp.float32)
  if bias is not None:
    logits = logits + bias
  weights = jax.nn.softmax(logits, axis=-1)
  return jnp.matmul(weights.astype(v.dtype), v, preferred_element_type=jnp.float32).astype(v.dtype)


class WindowAttention(nn.Module):
  """Multi-head self-attention inside windows with a learned relative position bias."""
  dim: int
  num_heads: int
  window: tuple[int, int]
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, mask=None):
    b, nw, n, c = x.shape
    wh, ww = self.window
    table = self.param("relative_position_bias_table", dense_init,
                       ((2 * wh - 1) * (2 * ww - 1), self.num_heads))
    index = relative_position_index(wh, ww).reshape(-1)
    bias = table[index].reshape(n, n, self.num_heads).transpose(2, 0, 1)   # (heads, N, N)
    if mask is not None:
      bias = bias[None] + jnp.asarray(mask)[:, None]                        # (nW, heads, N, N)
    qkv = nn.Dense(3 * self.dim, dtype=self.dtype, kernel_init=dense_init, name="qkv")(x)
    qkv = qkv.reshape(b, nw, n, 3, self.num_heads, c // self.num_heads).transpose(3, 0, 1, 4, 2, 5)
    out = attention(qkv[0], qkv[1], qkv[2], bias.astype(jnp.float32))      # (B, nW, heads, N, d)
    out = out.transpose(0, 1, 3, 2, 4).reshape(b, nw, n, c)
    return nn.Dense(self.dim, dtype=self.dtype, kernel_init=dense_init, name="proj")(out)


class Mlp(nn.Module):
  """fc1 -> exact GELU -> fc2 (timm's Mlp)."""
  hidden: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    dim = x.shape[-1]
    x = nn.Dense(self.hidden, dtype=self.dtype, kernel_init=dense_init, name="fc1")(x)
    x = nn.gelu(x, approximate=False)
    return nn.Dense(dim, dtype=self.dtype, kernel_init=dense_init, name="fc2")(x)


class SwinBlock(nn.Module):
  """Pre-norm (shifted-)window attention and MLP, each a residual with stochastic depth."""
  num_heads: int
  window_size: int
  shifted: bool
  drop_path: float = 0.0
  mlp_ratio: float = 4.0
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    b, h, w, c = x.shape
    window, shift = window_and_shift((h, w), self.window_size,
                                     self.window_size // 2 if self.shifted else 0)
    y = layer_norm("norm1", self.dtype)(x)
    if any(shift):
      y = jnp.roll(y, (-shift[0], -shift[1]), axis=(1, 2))
    pad_h, pad_w = (-h) % window[0], (-w) % window[1]
    if pad_h or pad_w:
      y = jnp.pad(y, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)))
    hp, wp = h + pad_h, w + pad_w
    mask = shifted_window_mask(hp, wp, window, shift) if any(shift) else None
    y = WindowAttention(c, self.num_heads, window, self.dtype, name="attn")(
        window_partition(y, window), mask)
    y = window_reverse(y, window, hp, wp)[:, :h, :w]
    if any(shift):
      y = jnp.roll(y, shift, axis=(1, 2))
    rng = lambda: self.make_rng("dropout")
    x = x + drop_path(y, self.drop_path, not train, rng)
    y = Mlp(int(c * self.mlp_ratio), self.dtype, name="mlp")(layer_norm("norm2", self.dtype)(x))
    return x + drop_path(y, self.drop_path, not train, rng)


class PatchMerging(nn.Module):
  """2x2 neighbours concatenated (timm's order), LayerNorm, Linear 4C -> out_dim without bias."""
  out_dim: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    b, h, w, c = x.shape
    if h % 2 or w % 2:
      x = jnp.pad(x, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)))
      h, w = h + h % 2, w + w % 2
    # (B, H/2, 2, W/2, 2, C) -> (B, H/2, W/2, w_off, h_off, C): x00, x10, x01, x11 as in timm.
    x = x.reshape(b, h // 2, 2, w // 2, 2, c).transpose(0, 1, 3, 4, 2, 5).reshape(
        b, h // 2, w // 2, 4 * c)
    x = layer_norm("norm", self.dtype)(x)
    return nn.Dense(self.out_dim, use_bias=False, dtype=self.dtype, kernel_init=dense_init,
                    name="reduction")(x)


class PatchEmbed(nn.Module):
  """Non-overlapping patch_size x patch_size conv (images zero-padded to a multiple), LayerNorm."""
  embed_dim: int
  patch_size: int
  dtype: jnp.dtype = jnp.float32
  conv_impl: str = "auto"

  @nn.compact
  def __call__(self, x):
    p = self.patch_size
    pad_h, pad_w = (-x.shape[1]) % p, (-x.shape[2]) % p
    x = Conv(self.embed_dim, (p, p), p, padding=((0, pad_h), (0, pad_w)), dtype=self.dtype,
             impl=self.conv_impl, name="proj")(x)
    return layer_norm("norm", self.dtype)(x)


class SwinStage(nn.Module):
  """Optional patch merging, then `depth` blocks alternating regular and shifted windows."""
  dim: int
  depth: int
  num_heads: int
  window_size: int
  drop_paths: Sequence[float]
  downsample: bool
  mlp_ratio: float = 4.0
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    if self.downsample:
      x = PatchMerging(self.dim, self.dtype, name="downsample")(x)
    for j in range(self.depth):
      x = SwinBlock(self.num_heads, self.window_size, shifted=j % 2 == 1,
                    drop_path=self.drop_paths[j], mlp_ratio=self.mlp_ratio, dtype=self.dtype,
                    name=f"blocks_{j}")(x, train)
    return x


class SwinTransformer(nn.Module):
  """Swin classifier; patch_size / window_size 0 pick them from the input size (`auto_sizes`)."""
  num_classes: int
  embed_dim: int = 96
  depths: Sequence[int] = (2, 2, 6, 2)
  num_heads: Sequence[int] = (3, 6, 12, 24)
  patch_size: int = 0
  window_size: int = 0
  drop_path_rate: float = 0.1
  mlp_ratio: float = 4.0
  dtype: jnp.dtype = jnp.float32
  conv_impl: str = "auto"

  def sizes(self, image_hw: Sequence[int]) -> tuple[int, int]:
    """The (patch, window) this model uses for an image of `image_hw` pixels."""
    patch = self.patch_size or auto_patch(min(image_hw))
    return patch, self.window_size or auto_window(-(-min(image_hw) // patch))

  @nn.compact
  def __call__(self, x, train: bool = False, return_features: bool = False):
    if len(self.depths) != len(self.num_heads):
      raise ValueError(f"Swin needs one head count per stage: depths {tuple(self.depths)}, "
                       f"num_heads {tuple(self.num_heads)}")
    patch, window = self.sizes(x.shape[1:3])
    x = PatchEmbed(self.embed_dim, patch, self.dtype, self.conv_impl, name="patch_embed")(
        x.astype(self.dtype))
    rates = np.linspace(0.0, self.drop_path_rate, sum(self.depths)).tolist()
    start = 0
    for i, (depth, heads) in enumerate(zip(self.depths, self.num_heads)):
      x = SwinStage(self.embed_dim * 2**i, depth, heads, window, rates[start:start + depth],
                    downsample=i > 0, mlp_ratio=self.mlp_ratio, dtype=self.dtype,
                    name=f"layers_{i}")(x, train)
      start += depth
    x = layer_norm("norm", self.dtype)(x)
    features = jnp.mean(x, axis=(1, 2)).astype(jnp.float32)
    logits = nn.Dense(self.num_classes, kernel_init=dense_init, name="head")(features)
    return (logits, features) if return_features else logits


def swin(name: str, num_classes: int, **kwargs) -> SwinTransformer:
  """Swin-T/S/B/L by name (`swin_t` ...); kwargs override embed_dim, depths, num_heads, sizes."""
  embed_dim, depths, heads = VARIANTS[name]
  kwargs = {"embed_dim": embed_dim, "depths": depths, "num_heads": heads, **kwargs}
  return SwinTransformer(num_classes, **kwargs)

