"""What this machine computes fast: the CPU's SIMD capability, the XLA:CPU settings jaxsynth runs
with, and the compute dtype `auto` resolves to. Models ask here; nothing here imports a model.

**XLA:CPU convolutions.** jax 0.10's XLA:CPU hands every convolution to YNNPACK by default
(`--xla_cpu_experimental_ynn_fusion_type=individual_dot,individual_convolution,reduce`). On the
2-core AMD EPYC with AVX512-BF16 (2026-12-04) its float32 convolutions ran at 94-176 GFLOP/s
forward and 39-150 GFLOP/s through the VJP, while XLA's own (Eigen) convolution ran at
170-200 and 130-190 on the same shapes: a ResNet-18 train step went from 18 to 46-49 images/s
with YNNPACK kept for dots and reductions only. `configure_xla` therefore sets that flag to
`individual_dot,reduce` at import (before the backend starts), unless XLA_FLAGS already names it
or JAXSYNTH_XLA_DEFAULTS=0. `xla_conv_library()` says which library the running backend uses,
and `layers.conv_formulation` picks formulations for it.

**Precision.** `auto` means bfloat16 compute (float32 parameters and accumulation) on GPU/TPU
and on CPUs with native bf16 dot instructions (AVX512-BF16 or AMX), float32 elsewhere: on an
AVX2-only CPU bf16 is emulated and ran slower than float32 (issue #12's measurements).
JAXSYNTH_CPU_FLAGS="avx2,fma" (a comma list) stands in for /proc/cpuinfo's flags, to see or
test what another machine class would choose.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import sys
import warnings

CPU_FLAGS_ENV = "JAXSYNTH_CPU_FLAGS"
XLA_DEFAULTS_ENV = "JAXSYNTH_XLA_DEFAULTS"
YNN_FUSION_FLAG = "--xla_cpu_experimental_ynn_fusion_type"
# XLA's default set without individual_convolution (convolutions go to XLA's Eigen kernels).
YNN_FUSIONS = "individual_dot,reduce"
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
AMX_FLAGS = ("amx_bf16", "amx_tile")
# Bytes of float32 attention weights per lax.map step of the CPU attention backward
# (models/attention.py), by CPU class: the fastest size measured at batch 64, 16 heads of 8 over
# 256 tokens, forward + backward per block: 2-core AMD EPYC with AVX512-BF16 (1 MB L2 per
# core, 2026-12-04): 2 MB; 2-core Intel Xeon with AMX (2 MB L2 per core, 2026-12-07):
# 2 MB 297-311 ms, 4 MB 274-276, 6 MB 253-273, 8 MB 211-233, 12 MB 218-224, 16 MB 284.
ATTENTION_CHUNK_BYTES = {"amx": 8 * 2**20, "other": 2 * 2**20}
DTYPE_CHOICES = ("auto", "float32", "bfloat16")


@functools.lru_cache(maxsize=None)
def _proc_cpu_flags(path: str = "/proc/cpuinfo") -> frozenset:
  """The first `flags` line of /proc/cpuinfo (empty where there is none)."""
  try:
    with open(path) as f:
      for line in f:
        key, _, value = line.partition(":")
        if key.strip() == "flags":
          return frozenset(value.split())
  except OSError:
    pass
  return frozenset()


def cpu_flags() -> frozenset:
  """The CPU's feature flags: $JAXSYNTH_CPU_FLAGS (comma-separated) when set, else /proc/cpuinfo."""
  override = os.environ.get(CPU_FLAGS_ENV)
  if override is not None:
    return frozenset(f.strip() for f in override.split(",") if f.strip())
  return _proc_cpu_flags()


def native_bf16_dots(flags=None) -> bool:
  """Whether the CPU multiplies bf16 natively (AVX512-BF16 or AMX), so bf16 dots beat float32."""
  flags = cpu_flags() if flags is None else set(flags)
  return any(f in flags for f in NATIVE_BF16_FLAGS)


def has_amx(flags=None) -> bool:
  """Whether the CPU has AMX tiles (Intel Sapphire Rapids and later)."""
  flags = cpu_flags() if flags is None else set(flags)
  return any(f in flags for f in AMX_FLAGS)


def attention_chunk_bytes(flags=None) -> int:
  """The float32 weight bytes per step of the chunked attention backward on this CPU."""
  return ATTENTION_CHUNK_BYTES["amx" if has_amx(flags) else "other"]


def resolve_dtype(name: str, backend: str | None = None, flags=None) -> str:
  """The compute dtype for config value `name`: `auto` is bfloat16 on gpu/tpu and on CPUs with
  native bf16 dots, float32 on other CPUs; float32 and bfloat16 are returned as they are."""
  if name != "auto":
    return name
  if backend is None:
    import jax
    backend = jax.default_backend()
  if backend != "cpu":
    return "bfloat16"
  return "bfloat16" if native_bf16_dots(flags) else "float32"


def compute_dtype(name: str):
  """The jnp dtype a model computes in for config value `name` (`auto` resolved here)."""
  import jax.numpy as jnp
  if name not in DTYPE_CHOICES:
    raise ValueError(f"compute dtype {name!r} is not one of {', '.join(DTYPE_CHOICES)}")
  return jnp.dtype(resolve_dtype(name))


def _flag_value(xla_flags: str, flag: str) -> str | None:
  """The value of `flag` in an XLA_FLAGS string (the last one given), or None."""
  value = None
  for item in xla_flags.split():
    name, eq, rest = item.partition("=")
    if name == flag:
      value = rest if eq else ""
  return value


def _backends_started() -> bool:
  """Whether jax has already created its backends (XLA_FLAGS is read then, once)."""
  if "jax" not in sys.modules:
    return False
  from jax._src import xla_bridge
  return bool(xla_bridge.backends_are_initialized())


def configure_xla() -> bool:
  """Adds the YNNPACK fusion setting above to XLA_FLAGS unless the user chose one or opted out
  (JAXSYNTH_XLA_DEFAULTS=0); returns whether it was added. Called when jaxsynth is imported."""
  flags = os.environ.get("XLA_FLAGS", "")
  if (os.environ.get(XLA_DEFAULTS_ENV, "1") == "0" or _flag_value(flags, YNN_FUSION_FLAG) is not None
      or importlib.util.find_spec("libtpu") is not None):
    return False
  if _backends_started():
    warnings.warn("jaxsynth was imported after jax started its backend, so XLA:CPU keeps "
                  "YNNPACK convolutions (2-3x slower float32 training on CPU); import jaxsynth "
                  "first, or set XLA_FLAGS="
                  f"{YNN_FUSION_FLAG}={YNN_FUSIONS} before starting Python", stacklevel=3)
    return False
  os.environ["XLA_FLAGS"] = f"{flags} {YNN_FUSION_FLAG}={YNN_FUSIONS}".strip()
  return True


def xla_conv_library(xla_flags: str | None = None) -> str:
  """Which library XLA:CPU runs convolutions with, `eigen` or `ynn`, judged from `xla_flags`
  (default: $XLA_FLAGS, which `configure_xla` only changes before the backend starts)."""
  xla_flags = os.environ.get("XLA_FLAGS", "") if xla_flags is None else xla_flags
  value = _flag_value(xla_flags, YNN_FUSION_FLAG)
  if value is None:
    return "ynn"
  return "ynn" if "individual_convolution" in value.split(",") else "eigen"

