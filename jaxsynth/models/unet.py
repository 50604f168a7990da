"""Class-conditional UNet denoiser in the ADM style (Dhariwal & Nichol 2021).

Layout (as ADM's `UNetModel` and diffusers' `UNet2DModel`):
  emb = MLP(sinusoid(t, channels[0])) + label_table[labels]     (table has num_classes+1 rows)
  conv_in -> per level: res_blocks x [ResBlock (+ attention at attn_resolutions)], then a
  stride-2 conv (not on the last level); every output above, conv_in's included, is a skip.
  middle: ResBlock, [attention], ResBlock.
  up, levels reversed: (res_blocks + 1) x [concat(skip) -> ResBlock (+ attention)], then nearest
  upsample + 3x3 conv (not on the last level).  out: GroupNorm -> SiLU -> conv_out.
ResBlock: GN -> SiLU -> conv3x3 -> inject emb -> GN -> SiLU -> dropout -> conv3x3, + skip (a 1x1
conv when channels change). The embedding goes in as AdaGN, GN(h) * (1 + scale) + shift
(`scale_shift_norm=True`, ADM), or added to h before the second norm (diffusers' "default").
`attn_resolutions` are feature-map sizes in pixels (16 = the 16x16 level).
With `zero_init` the last conv of each ResBlock, the attention output projection and conv_out
start at zero, as in ADM (the network then outputs exactly zero at init).
"""

from __future__ import annotations

import functools
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxsynth.models.embeddings import LabelEmbedder, TimestepEmbedder, dot_product_attention
from jaxsynth.models.layers import (Conv, concatenate_channels, dense, group_norm,
                                     pre_conv_dtype)


def _zero_or(init, zero: bool):
  """Zeros when `zero` is set, else `init`."""
  return nn.initializers.zeros if zero else init


class ResBlock(nn.Module):
  """ADM residual block with the conditioning embedding by scale-shift norm or addition
  (`emb=None`: the plain block of the VQGAN/LDM autoencoders)."""
  features: int
  norm_groups: int = 32
  dropout: float = 0.0
  scale_shift_norm: bool = True
  zero_init: bool = True
  dtype: jnp.dtype = jnp.float32
  conv_impl: str = "auto"

  @nn.compact
  def __call__(self, x, emb, train: bool):
    norm = functools.partial(group_norm(self.dtype), num_groups=self.norm_groups, epsilon=1e-5,
                             dtype=pre_conv_dtype(self.dtype))
    conv = functools.partial(Conv, kernel_size=(3, 3), padding=1, dtype=self.dtype,
                             impl=self.conv_impl)
    h = conv(self.features, name="conv1")(nn.silu(norm(name="norm1")(x)))
    if emb is None:  # unconditional (the autoencoders' blocks): no emb_proj
      h = norm(name="norm2")(h)
    elif self.scale_shift_norm:
      e = nn.Dense(2 * self.features, dtype=self.dtype,
                   name="emb_proj")(nn.silu(emb))[:, None, None, :]
      scale, shift = jnp.split(e, 2, axis=-1)
      h = norm(name="norm2")(h) * (1 + scale) + shift
    else:
      e = nn.Dense(self.features, dtype=self.dtype, name="emb_proj")(nn.silu(emb))[:, None, None, :]
      h = norm(name="norm2")(h + e)
    h = nn.Dropout(self.dropout, deterministic=not train)(nn.silu(h))
    h = conv(self.features, kernel_init=_zero_or(nn.initializers.lecun_normal(), self.zero_init),
             name="conv2")(h)
    if x.shape[-1] != self.features:
      x = Conv(self.features, (1, 1), dtype=self.dtype, impl=self.conv_impl, name="skip")(x)
    return x + h


class AttentionBlock(nn.Module):
  """GroupNorm -> multi-head self-attention over the H*W positions -> projection, residual."""
  head_dim: int = 0
  num_heads: int = 0
  norm_groups: int = 32
  zero_init: bool = True
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    b, hgt, wid, c = x.shape
    heads = c // self.head_dim if self.head_dim else self.num_heads
    if heads < 1 or c % heads:
      raise ValueError(f"attention over {c} channels cannot use head_dim={self.head_dim}, "
                       f"num_heads={self.num_heads}")
    h = group_norm(self.dtype)(num_groups=self.norm_groups, epsilon=1e-5, dtype=self.dtype,
                               name="norm")(x)
    linear = dense(self.dtype)  # on CPU in bf16: float32 accumulation, float32 q, k, v and out
    qkv = linear(3 * c, dtype=self.dtype, name="qkv")(h.reshape(b, hgt * wid, c))
    q, k, v = jnp.split(qkv.reshape(b, hgt * wid, 3, heads, c // heads), 3, axis=2)
    out = dot_product_attention(q[:, :, 0], k[:, :, 0], v[:, :, 0]).reshape(b, hgt * wid, c)
    out = linear(c, dtype=self.dtype, name="proj_out",
                 kernel_init=_zero_or(nn.initializers.lecun_normal(), self.zero_init))(out)
    return (x + out.reshape(b, hgt, wid, c)).astype(x.dtype)


class UNet(nn.Module):
  """ADM-style class-conditional UNet: apply(params, x_t, t, labels, train) -> (B,H,W,C_out)."""
  num_classes: int
  channels: Sequence[int] = (64, 128, 128)
  res_blocks: int = 2
  attn_resolutions: Sequence[int] = (16,)
  head_dim: int = 8             # channels per head; 0 uses num_heads
  num_heads: int = 0            # heads per attention block when head_dim == 0
  norm_groups: int = 32
  time_embed_dim: int = 0       # 0 = 4 * channels[0]
  mid_attention: bool = True
  dropout: float = 0.0
  scale_shift_norm: bool = True
  zero_init: bool = True
  learn_sigma: bool = False     # output 2C channels (mean and variance interpolation)
  label_init_std: float = 1.0   # the label table's init (PyTorch nn.Embedding: N(0, 1))
  dtype: jnp.dtype = jnp.float32
  conv_impl: str = "auto"

  @nn.compact
  def __call__(self, x, t, labels, train: bool = False):
    if not self.head_dim and not self.num_heads:
      raise ValueError("UNet attention needs head_dim > 0 or num_heads > 0")
    out_channels = x.shape[-1] * (2 if self.learn_sigma else 1)
    emb_dim = self.time_embed_dim or 4 * self.channels[0]
    emb = TimestepEmbedder(emb_dim, frequency_dim=self.channels[0], dtype=self.dtype,
                           name="time_embed")(t)
    emb = emb + LabelEmbedder(self.num_classes, emb_dim, dtype=self.dtype,
                              embedding_init=nn.initializers.normal(self.label_init_std),
                              name="label_embed")(labels)
    res = functools.partial(ResBlock, norm_groups=self.norm_groups, dropout=self.dropout,
                            scale_shift_norm=self.scale_shift_norm, zero_init=self.zero_init,
                            dtype=self.dtype, conv_impl=self.conv_impl)
    attn = functools.partial(AttentionBlock, head_dim=self.head_dim, num_heads=self.num_heads,
                             norm_groups=self.norm_groups, zero_init=self.zero_init,
                             dtype=self.dtype)
    conv = functools.partial(Conv, kernel_size=(3, 3), padding=1, dtype=self.dtype,
                             impl=self.conv_impl)

    h = conv(self.channels[0], name="conv_in")(x.astype(self.dtype))
    skips = [h]
    last = len(self.channels) - 1
    for level, ch in enumerate(self.channels):
      for i in range(self.res_blocks):
        h = res(ch, name=f"down_{level}_res_{i}")(h, emb, train)
        if h.shape[1] in self.attn_resolutions:
          h = attn(name=f"down_{level}_attn_{i}")(h)
        skips.append(h)
      if level != last:
        h = conv(ch, strides=2, name=f"down_{level}_downsample")(h)
        skips.append(h)

    h = res(self.channels[-1], name="mid_res_0")(h, emb, train)
    if self.mid_attention:
      h = attn(name="mid_attn")(h)
    h = res(self.channels[-1], name="mid_res_1")(h, emb, train)

    for level in reversed(range(len(self.channels))):
      ch = self.channels[level]
      for i in range(self.res_blocks + 1):
        h = concatenate_channels([h, skips.pop()])
        h = res(ch, name=f"up_{level}_res_{i}")(h, emb, train)
        if h.shape[1] in self.attn_resolutions:
          h = attn(name=f"up_{level}_attn_{i}")(h)
      if level != 0:
        h = conv(ch, upsample=True, name=f"up_{level}_upsample")(h)
    assert not skips

    h = nn.silu(group_norm(self.dtype)(num_groups=self.norm_groups, epsilon=1e-5,
                                       dtype=pre_conv_dtype(self.dtype), name="norm_out")(h))
    h = conv(out_channels, kernel_init=_zero_or(nn.initializers.lecun_normal(), self.zero_init),
             name="conv_out")(h)
    return h.astype(jnp.float32)
