"""Vision Transformer classifiers (Dosovitskiy et al. 2021), ViT-S/B with timm's layout.

Patch embedding conv, a class token, learned position embeddings over [cls, patches], pre-norm
blocks (LayerNorm eps 1e-6, exact GELU), final LayerNorm, head on the class token. Parameter
names follow timm (`patch_embed/proj`, `cls_token`, `pos_embed`, `blocks_i/attn/qkv`, `head`).
Patch size 0 picks one from the image size (`auto_patch`): 2 up to 16 px, 4 up to 32 px,
8 up to 64 px, else 16; images are zero-padded to a multiple of the patch.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from jaxsynth.models.embeddings import dot_product_attention
from jaxsynth.models.layers import Conv
from jaxsynth.models.swin import Mlp, dense_init, drop_path

# name -> (embed_dim, depth, num_heads)
VARIANTS = {"vit_s": (384, 12, 6), "vit_b": (768, 12, 12)}


def auto_patch(image_size: int) -> int:
  """Patch size used when model.patch_size is 0 (about 7x7 to 14x14 tokens)."""
  for limit, patch in ((16, 2), (32, 4), (64, 8)):
    if image_size <= limit:
      return patch
  return 16


class Block(nn.Module):
  """Pre-norm multi-head self-attention and MLP residuals with stochastic depth."""
  num_heads: int
  drop_path: float = 0.0
  mlp_ratio: float = 4.0
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    b, n, c = x.shape
    rng = lambda: self.make_rng("dropout")
    y = nn.LayerNorm(epsilon=1e-6, dtype=self.dtype, name="norm1")(x)
    qkv = nn.Dense(3 * c, dtype=self.dtype, kernel_init=dense_init, name="qkv")(y)
    qkv = qkv.reshape(b, n, 3, self.num_heads, c // self.num_heads)
    y = dot_product_attention(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]).reshape(b, n, c)
    y = nn.Dense(c, dtype=self.dtype, kernel_init=dense_init, name="proj")(y)
    x = x + drop_path(y, self.drop_path, not train, rng)
    y = nn.LayerNorm(epsilon=1e-6, dtype=self.dtype, name="norm2")(x)
    y = Mlp(int(c * self.mlp_ratio), self.dtype, name="mlp")(y)
    return x + drop_path(y, self.drop_path, not train, rng)


class ViT(nn.Module):
  """ViT classifier on the class token; patch_size 0 picks it from the input size."""
  num_classes: int
  embed_dim: int = 384
  depth: int = 12
  num_heads: int = 6
  patch_size: int = 0
  drop_path_rate: float = 0.1
  mlp_ratio: float = 4.0
  dtype: jnp.dtype = jnp.float32
  conv_impl: str = "auto"

  @nn.compact
  def __call__(self, x, train: bool = False, return_features: bool = False):
    p = self.patch_size or auto_patch(min(x.shape[1:3]))
    pad_h, pad_w = (-x.shape[1]) % p, (-x.shape[2]) % p
    x = Conv(self.embed_dim, (p, p), p, padding=((0, pad_h), (0, pad_w)), dtype=self.dtype,
             impl=self.conv_impl, name="patch_embed_proj")(x.astype(self.dtype))
    b, h, w, c = x.shape
    cls = self.param("cls_token", nn.initializers.normal(1e-6), (1, 1, c))
    pos = self.param("pos_embed", nn.initializers.normal(0.02), (1, 1 + h * w, c))
    x = jnp.concatenate([jnp.broadcast_to(cls, (b, 1, c)).astype(self.dtype),
                         x.reshape(b, h * w, c)], axis=1) + pos.astype(self.dtype)
    rates = np.linspace(0.0, self.drop_path_rate, self.depth).tolist()
    for i in range(self.depth):
      x = Block(self.num_heads, rates[i], self.mlp_ratio, self.dtype, name=f"blocks_{i}")(x, train)
    x = nn.LayerNorm(epsilon=1e-6, dtype=self.dtype, name="norm")(x)
    features = x[:, 0].astype(jnp.float32)
    logits = nn.Dense(self.num_classes, kernel_init=dense_init, name="head")(features)
    return (logits, features) if return_features else logits


def vit(name: str, num_classes: int, **kwargs) -> ViT:
  """ViT-S/B by name (`vit_s`, `vit_b`); kwargs override embed_dim, depth, num_heads, patch."""
  embed_dim, depth, heads = VARIANTS[name]
  kwargs = {"embed_dim": embed_dim, "depth": depth, "num_heads": heads, **kwargs}
  return ViT(num_classes, **kwargs)
