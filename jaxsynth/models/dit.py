"""Class-conditional Diffusion Transformer with adaLN-Zero blocks (Peebles & Xie 2023).

As the reference code (facebookresearch/DiT, models.py): a p x p stride-p conv patch embedding,
a fixed 2-D sin-cos position embedding, conditioning c = t_embedder(t) + y_embedder(labels)
(the label table has num_classes + 1 rows, the last being the null label), N blocks
  x += gate_msa * Attn(LN(x) * (1 + scale_msa) + shift_msa)
  x += gate_mlp * MLP(LN(x) * (1 + scale_mlp) + shift_mlp)
with the six vectors from SiLU -> Dense(c) (zero-initialised, so every block starts as the
identity), then a final adaLN (shift, scale) and a Dense back to p*p*C_out per token, also
zero-initialised, so the model outputs exactly zero at init. Other Dense layers are
Xavier-uniform with zero bias, the timestep MLP and label table N(0, 0.02), as in the paper.
"""

from __future__ import annotations

import math
import re

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxsynth.models.embeddings import (LabelEmbedder, TimestepEmbedder, dot_product_attention,
                                        sincos_pos_embed_2d)
from jaxsynth.models.layers import Conv

# name -> (depth, hidden_size, num_heads), Table 1 of the paper.
DIT_SIZES = {"S": (12, 384, 6), "B": (12, 768, 12), "L": (24, 1024, 16), "XL": (28, 1152, 16)}
PATCH_SIZES = (2, 4, 8)


def dit_config(name: str) -> dict:
  """Keyword arguments of `DiT` for a name like "DiT-S/2" (sizes S/B/L/XL, patch 2/4/8)."""
  match = re.fullmatch(r"DiT-(S|B|L|XL)/(\d+)", name)
  if not match or int(match.group(2)) not in PATCH_SIZES:
    raise ValueError(f"unknown DiT variant {name!r}; use DiT-{{S,B,L,XL}}/{{2,4,8}}, e.g. DiT-S/2")
  depth, hidden, heads = DIT_SIZES[match.group(1)]
  return dict(depth=depth, hidden_size=hidden, num_heads=heads, patch_size=int(match.group(2)))


def _xavier_uniform_flat(key, shape, dtype=jnp.float32):
  """Xavier-uniform of a conv kernel seen as a (kh*kw*cin, cout) matrix, as DiT's x_embedder."""
  flat = (math.prod(shape[:-1]), shape[-1])
  return nn.initializers.xavier_uniform()(key, flat, dtype).reshape(shape)


def modulate(x: jax.Array, shift: jax.Array, scale: jax.Array) -> jax.Array:
  """adaLN modulation of tokens (B, L, D) by per-sample (B, D) shift and scale."""
  return x * (1 + scale[:, None]) + shift[:, None]


class Attention(nn.Module):
  """timm-style multi-head self-attention: fused qkv Dense, attention, output projection."""
  num_heads: int
  dropout: float = 0.0
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    b, n, d = x.shape
    dense = lambda f, name: nn.Dense(f, dtype=self.dtype, name=name,
                                     kernel_init=nn.initializers.xavier_uniform())
    qkv = dense(3 * d, "qkv")(x).reshape(b, n, 3, self.num_heads, d // self.num_heads)
    out = dot_product_attention(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]).reshape(b, n, d)
    out = dense(d, "proj")(out)
    return nn.Dropout(self.dropout, deterministic=not train)(out)


class DiTBlock(nn.Module):
  """Transformer block with adaLN-Zero conditioning."""
  hidden_size: int
  num_heads: int
  mlp_ratio: float = 4.0
  dropout: float = 0.0
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, c, train: bool):
    d = self.hidden_size
    norm = lambda name: nn.LayerNorm(epsilon=1e-6, use_scale=False, use_bias=False,
                                     dtype=self.dtype, name=name)
    dense = lambda f, name: nn.Dense(f, dtype=self.dtype, name=name,
                                     kernel_init=nn.initializers.xavier_uniform())
    mod = nn.Dense(6 * d, dtype=self.dtype, kernel_init=nn.initializers.zeros,
                   name="adaLN_modulation")(nn.silu(c))
    shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = jnp.split(mod, 6, axis=-1)
    h = Attention(self.num_heads, self.dropout, self.dtype, name="attn")(
        modulate(norm("norm1")(x), shift_msa, scale_msa), train)
    x = x + gate_msa[:, None] * h
    h = dense(int(d * self.mlp_ratio), "mlp_fc1")(modulate(norm("norm2")(x), shift_mlp, scale_mlp))
    h = dense(d, "mlp_fc2")(nn.gelu(h, approximate=True))
    h = nn.Dropout(self.dropout, deterministic=not train)(h)
    return x + gate_mlp[:, None] * h


class DiT(nn.Module):
  """Diffusion Transformer: apply(params, x_t, t, labels, train) -> (B,H,W,C_out)."""
  num_classes: int
  patch_size: int = 2
  hidden_size: int = 384
  depth: int = 12
  num_heads: int = 6
  mlp_ratio: float = 4.0
  dropout: float = 0.0          # on the attention and MLP outputs; the paper uses none
  learn_sigma: bool = False     # output 2C channels (mean and variance interpolation)
  dtype: jnp.dtype = jnp.float32
  conv_impl: str = "auto"

  @nn.compact
  def __call__(self, x, t, labels, train: bool = False):
    b, hgt, wid, c = x.shape
    p, d = self.patch_size, self.hidden_size
    if hgt % p or wid % p:
      raise ValueError(f"DiT patch size {p} does not divide the image size {hgt}x{wid}")
    if d % self.num_heads:
      raise ValueError(f"DiT hidden size {d} is not divisible by num_heads={self.num_heads}")
    out_channels = c * (2 if self.learn_sigma else 1)
    gh, gw = hgt // p, wid // p

    h = Conv(d, (p, p), strides=p, padding=0, dtype=self.dtype, kernel_init=_xavier_uniform_flat,
             impl=self.conv_impl, name="x_embedder")(x.astype(self.dtype))
    h = h.reshape(b, gh * gw, d) + jnp.asarray(sincos_pos_embed_2d(d, gh, gw), self.dtype)[None]

    cond = TimestepEmbedder(d, frequency_dim=256, dtype=self.dtype,
                            kernel_init=nn.initializers.normal(0.02), name="t_embedder")(t)
    cond = cond + LabelEmbedder(self.num_classes, d, dtype=self.dtype,
                                embedding_init=nn.initializers.normal(0.02),
                                name="y_embedder")(labels)
    for i in range(self.depth):
      h = DiTBlock(d, self.num_heads, self.mlp_ratio, self.dropout, self.dtype,
                   name=f"block_{i}")(h, cond, train)

    mod = nn.Dense(2 * d, dtype=self.dtype, kernel_init=nn.initializers.zeros,
                   name="final_adaLN_modulation")(nn.silu(cond))
    shift, scale = jnp.split(mod, 2, axis=-1)
    h = nn.LayerNorm(epsilon=1e-6, use_scale=False, use_bias=False, dtype=self.dtype,
                     name="final_norm")(h)
    h = nn.Dense(p * p * out_channels, dtype=self.dtype, kernel_init=nn.initializers.zeros,
                 name="final_linear")(modulate(h, shift, scale))
    # Unpatchify: token (i, j) holds its p x p x C_out patch in (row, col, channel) order.
    h = h.reshape(b, gh, gw, p, p, out_channels).transpose(0, 1, 3, 2, 4, 5)
    return h.reshape(b, hgt, wid, out_channels).astype(jnp.float32)
