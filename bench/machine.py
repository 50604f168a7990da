"""The machine a benchmark ran on: CPU model, the SIMD flags that decide which formulation is
fastest, and the load. Imports neither jax nor torch, so every benchmark (ours and the peers')
records the same fields."""

from __future__ import annotations

import os
import platform

# The /proc/cpuinfo flags that change which conv formulation and precision are fastest.
SIMD_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile")


def cpu_info(cpuinfo_path: str = "/proc/cpuinfo") -> dict:
  """{model, flags (the SIMD_FLAGS present), machine_class, cores, load_avg_1min}."""
  model, flags = platform.processor() or platform.machine(), set()
  try:
    with open(cpuinfo_path) as f:
      for line in f:
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and model in ("", platform.machine(), platform.processor()):
          model = value.strip()
        elif key == "flags" and not flags:
          flags = set(value.split())
  except OSError:
    pass
  present = [f for f in SIMD_FLAGS if f in flags]
  return {"model": model, "flags": present, "machine_class": machine_class(present),
          "cores": os.cpu_count(), "load_avg_1min": os.getloadavg()[0]}


def machine_class(flags) -> str:
  """The CPU class the results tables are kept by: amx (Intel Xeon with AMX tiles: bf16 dots
  at 5x its float32 matmul) | avx512_bf16 | avx512 | avx2 | other."""
  flags = set(flags)
  if "amx_bf16" in flags or "amx_tile" in flags:
    return "amx"
  if "avx512_bf16" in flags:
    return "avx512_bf16"
  if "avx512f" in flags:
    return "avx512"
  return "avx2" if "avx2" in flags else "other"
