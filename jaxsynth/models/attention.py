"""Softmax attention: the plain heads-major form, and for XLA:CPU the same forward with a
hand-written VJP that recomputes the softmax a few heads at a time (FlashAttention's backward,
Dao 2023, Alg. 2) instead of storing it.

Why: the UNet's attention has many heads of few channels (16 of 8 over 256 tokens). Its (L, L)
weights are 268 MB per block at batch 64, and XLA's autodiff of the plain form stores them and
reads them back through transposes: 433 ms per block's forward + backward at batch 64 on the
2-core AVX512-BF16 machine (2026-12-04), 14x its forward. In the backward here each `lax.map`
step holds the weights of a few heads only (a few MB, reused from step to step), and P and its
transpose are recomputed from q and k (two K = head_dim matmuls, cheaper than a transpose of
P): 205-237 ms for the same block. The chunk size is the CPU class's (`hardware`): on a 2-core
Intel Xeon with AMX (2026-12-07) 8 MB chunks took 211-233 ms per block where 2 MB took
297-311. Without differentiation the forward is the plain form (chunking it was 1.5x slower
there: 12.6 vs 8.4 ms at batch 16).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from jaxsynth import hardware

# Heads per lax.map step: chunk * Lq * Lk float32 weights stay near this many bytes; None =
# `hardware.attention_chunk_bytes()`, the size measured fastest on this CPU class.
CHUNK_BYTES = None


def _dot(a, b, contract_a: int, contract_b: int):
  """Batched (over axis 0) dot of a and b over the given axes, accumulated in float32."""
  return jax.lax.dot_general(a, b, (((contract_a,), (contract_b,)), ((0,), (0,))),
                             preferred_element_type=jnp.float32)


def _chunk(n: int, lq: int, lk: int) -> int:
  """The largest divisor of n whose chunk of float32 (lq, lk) weights fits the chunk budget
  (CHUNK_BYTES, or this CPU class's `hardware.attention_chunk_bytes()`)."""
  budget = hardware.attention_chunk_bytes() if CHUNK_BYTES is None else CHUNK_BYTES
  target = max(1, budget // (4 * lq * lk))
  return max(c for c in range(1, min(n, target) + 1) if n % c == 0)


def _map_chunks(fn, *xs):
  """fn over leading-axis chunks of xs (all with the same leading size), outputs re-joined."""
  n, lq = xs[0].shape[:2]
  c = _chunk(n, lq, xs[1].shape[-1])
  ys = jax.lax.map(lambda a: fn(*a), tuple(x.reshape(n // c, c, *x.shape[1:]) for x in xs))
  return jax.tree.map(lambda y: y.reshape(n, *y.shape[2:]), ys)


def _heads_major(q, k, v):
  """(B, L, H, D) -> q (BH, Lq, D) scaled by 1/sqrt(D), k (BH, D, Lk), v (BH, Lk, D)."""
  b, lq, h, d = q.shape
  scale = jnp.asarray(1.0 / math.sqrt(d), q.dtype)
  qh = (q * scale).transpose(0, 2, 1, 3).reshape(b * h, lq, d)
  kh = k.transpose(0, 2, 3, 1).reshape(b * h, d, k.shape[1])
  vh = v.transpose(0, 2, 1, 3).reshape(b * h, v.shape[1], d)
  return qh, kh, vh


def plain_attention(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
  """Softmax attention over (B, L, heads, head_dim) inputs; logits and softmax in float32.

  Exactly softmax(q k^T / sqrt(d)) v, computed as exp(s - max s) v / sum(exp(s - max s)) with
  heads-major batched matmuls: the division then touches the (L, d) output rather than the
  (L, L) weights. On XLA:CPU this is ~3.5x faster than the einsum-softmax-einsum form for
  small heads (B=16, L=256, 16 heads of 8: 16 vs 57 ms), where attention is memory-bound.
  """
  scale = jnp.asarray(1.0 / math.sqrt(q.shape[-1]), q.dtype)
  q = (q * scale).transpose(0, 2, 1, 3)                       # (B, H, Lq, D)
  k = k.transpose(0, 2, 3, 1)                                 # (B, H, D, Lk)
  v = v.transpose(0, 2, 1, 3)                                 # (B, H, Lk, D)
  logits = jnp.matmul(q, k, preferred_element_type=jnp.float32)
  unnormalised = jnp.exp(logits - jax.lax.stop_gradient(logits.max(axis=-1, keepdims=True)))
  out = jnp.matmul(unnormalised.astype(v.dtype), v, preferred_element_type=jnp.float32)
  out = out / unnormalised.sum(axis=-1, keepdims=True)
  return out.astype(v.dtype).transpose(0, 2, 1, 3)


def _forward_chunk(qh, kh, vh):
  """out = softmax(q k) v in float32 and the row log-sum-exp, for one chunk of heads."""
  logits = _dot(qh, kh, 2, 1)                                        # (c, Lq, Lk)
  m = logits.max(axis=-1, keepdims=True)
  p = jnp.exp(logits - m)
  total = p.sum(axis=-1, keepdims=True)
  out = _dot(p.astype(vh.dtype), vh, 2, 1) / total
  return out, m + jnp.log(total)


def _backward_chunk(qh, kh, vh, g, out, lse):
  """dq (unscaled-q units), dk, dv for one chunk: dS = P * (g v^T - rowsum(g * out))."""
  delta = jnp.sum(g * out, axis=-1, keepdims=True)                  # (c, Lq, 1)
  p = jnp.exp(_dot(qh, kh, 2, 1) - lse)                              # (c, Lq, Lk)
  ds = p * (_dot(g, vh, 2, 2) - delta)
  dq = _dot(ds, kh, 2, 2)                                            # (c, Lq, D)
  p_t = jnp.exp(_dot(kh, qh, 1, 2) - jnp.swapaxes(lse, 1, 2))        # (c, Lk, Lq)
  ds_t = p_t * (_dot(vh, g, 2, 2) - jnp.swapaxes(delta, 1, 2))
  return dq, _dot(ds_t, qh, 2, 1), _dot(p_t, g, 2, 1)                # dk, dv: (c, Lk, D)


def _to_inputs(x, b: int, h: int, dtype):
  """(BH, L, D) -> (B, L, H, D) in dtype."""
  return x.reshape(b, h, x.shape[1], x.shape[2]).transpose(0, 2, 1, 3).astype(dtype)


@jax.custom_vjp
def chunked_attention(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
  """`plain_attention`; under differentiation its forward and backward run a few heads at a
  time, and the backward recomputes the softmax."""
  return plain_attention(q, k, v)


def _forward(q, k, v):
  b, _, h, _ = q.shape
  out, lse = _map_chunks(_forward_chunk, *_heads_major(q, k, v))
  return _to_inputs(out, b, h, v.dtype), (q, k, v, out, lse)


def _backward(residuals, g):
  q, k, v, out, lse = residuals
  b, lq, h, d = q.shape
  qh, kh, vh = (x.astype(jnp.float32) for x in _heads_major(q, k, v))
  gh = g.astype(jnp.float32).transpose(0, 2, 1, 3).reshape(b * h, lq, d)
  dq, dk, dv = _map_chunks(_backward_chunk, qh, kh, vh, gh, out, lse)
  dq = dq * (1.0 / math.sqrt(d))                  # qh was scaled: d(q * s) / dq = s
  return (_to_inputs(dq, b, h, q.dtype), _to_inputs(dk, b, h, k.dtype),
          _to_inputs(dv, b, h, v.dtype))


chunked_attention.defvjp(_forward, _backward)
