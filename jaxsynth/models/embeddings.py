"""Building blocks shared by the denoisers: timestep, label and position embeddings, attention.

The formulas follow the reference code so published weights convert one-to-one:
`timestep_embedding` is ADM's / DiT's (cos first, then sin; frequencies exp(-ln(P) i / half)),
`sincos_pos_embed_2d` is MAE's / DiT's (first half encodes the column, second half the row).
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxsynth.models.attention import chunked_attention, plain_attention


def timestep_embedding(t: jax.Array, dim: int, max_period: float = 10000.0) -> jax.Array:
  """Sinusoidal embedding (B,) -> (B, dim) float32: [cos(t f_i), sin(t f_i)], f_i = P^(-i/half)."""
  half = dim // 2
  freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
  args = jnp.asarray(t, jnp.float32)[:, None] * freqs[None]
  emb = jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)
  if dim % 2:
    emb = jnp.concatenate([emb, jnp.zeros_like(emb[:, :1])], axis=-1)
  return emb


def sincos_pos_embed_1d(dim: int, positions: np.ndarray) -> np.ndarray:
  """MAE's 1-D sin-cos embedding of positions (M,) -> (M, dim): [sin(p w_i), cos(p w_i)]."""
  assert dim % 2 == 0, dim
  omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
  out = np.einsum("m,d->md", positions.reshape(-1).astype(np.float64), omega)
  return np.concatenate([np.sin(out), np.cos(out)], axis=1)


def sincos_pos_embed_2d(dim: int, grid_h: int, grid_w: int) -> np.ndarray:
  """Fixed 2-D sin-cos position embedding (grid_h*grid_w, dim), tokens in row-major order."""
  assert dim % 4 == 0, f"2-D sin-cos position embedding needs a width divisible by 4, got {dim}"
  cols, rows = np.meshgrid(np.arange(grid_w, dtype=np.float64), np.arange(grid_h, dtype=np.float64))
  emb = np.concatenate([sincos_pos_embed_1d(dim // 2, cols), sincos_pos_embed_1d(dim // 2, rows)],
                       axis=1)
  return emb.astype(np.float32)


def dot_product_attention(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
  """Softmax attention over (B, L, heads, head_dim) inputs; logits and softmax in float32.

  On CPU, `attention.chunked_attention` (a few heads at a time, softmax recomputed in the
  backward: 1.8x faster forward + backward at batch 64); elsewhere `plain_attention`.
  """
  if jax.default_backend() == "cpu":
    return chunked_attention(q, k, v)
  return plain_attention(q, k, v)


class TimestepEmbedder(nn.Module):
  """Sinusoidal timestep features -> Dense -> SiLU -> Dense (ADM's time_embed, DiT's t_embedder)."""
  features: int
  frequency_dim: int = 256
  dtype: jnp.dtype = jnp.float32
  kernel_init: nn.initializers.Initializer = nn.initializers.lecun_normal()

  @nn.compact
  def __call__(self, t):
    h = timestep_embedding(t, self.frequency_dim).astype(self.dtype)
    h = nn.Dense(self.features, dtype=self.dtype, kernel_init=self.kernel_init, name="linear_1")(h)
    return nn.Dense(self.features, dtype=self.dtype, kernel_init=self.kernel_init,
                    name="linear_2")(nn.silu(h))


class LabelEmbedder(nn.Module):
  """Class label table with num_classes + 1 rows; row num_classes is the learned null label."""
  num_classes: int
  features: int
  dtype: jnp.dtype = jnp.float32
  embedding_init: nn.initializers.Initializer = nn.initializers.normal(0.02)

  @nn.compact
  def __call__(self, labels):
    table = nn.Embed(self.num_classes + 1, self.features, dtype=self.dtype,
                     embedding_init=self.embedding_init, name="embedding")
    return table(jnp.asarray(labels, jnp.int32))
