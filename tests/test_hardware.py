"""Capability-keyed choices: `auto` precision, the XLA:CPU convolution setting, and the conv
formulation table, on faked CPU flag sets; every formulation equals XLA's conv."""

from __future__ import annotations

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsynth import hardware
from jaxsynth.errors import ConfigError
from jaxsynth.models import denoisers, layers, registry

AVX2 = {"avx", "avx2", "fma"}
AVX512 = AVX2 | {"avx512f", "avx512bw", "avx512vl"}
AVX512_BF16 = AVX512 | {"avx512_bf16"}
AMX = AVX512 | {"amx_bf16", "amx_tile"}


@pytest.mark.parametrize("flags,backend,expected", [
    (AVX2, "cpu", "float32"), (AVX512, "cpu", "float32"), (set(), "cpu", "float32"),
    (AVX512_BF16, "cpu", "bfloat16"), (AMX, "cpu", "bfloat16"),
    (AVX2, "gpu", "bfloat16"), (AVX2, "tpu", "bfloat16")])
def test_auto_resolves_by_capability(flags, backend, expected):
  assert hardware.resolve_dtype("auto", backend, flags) == expected
  for explicit in ("float32", "bfloat16"):
    assert hardware.resolve_dtype(explicit, backend, flags) == explicit


@pytest.mark.parametrize("fake,expected", [("avx,avx2,fma", "float32"),
                                           ("avx2, avx512f, avx512_bf16", "bfloat16"),
                                           ("", "float32")])
def test_cpu_flags_can_be_faked_for_the_models(monkeypatch, fake, expected):
  monkeypatch.setenv(hardware.CPU_FLAGS_ENV, fake)
  assert hardware.cpu_flags() == {f.strip() for f in fake.split(",") if f.strip()}
  assert hardware.compute_dtype("auto") == jnp.dtype(expected)          # the tests run on CPU
  cfg = denoisers.denoiser_model_config()
  cfg.dtype = "auto"
  assert denoisers.make_denoiser(cfg, 2).dtype == jnp.dtype(expected)
  classifier = registry.make_classifier(
      __import__("ml_collections").ConfigDict({"name": "resnet18", "dtype": "auto", "width": 8,
                                               "stem": "small"}), 3)
  assert classifier.dtype == jnp.dtype(expected)


def test_bad_dtype_is_a_config_error_naming_the_choices():
  cfg = denoisers.denoiser_model_config()
  cfg.dtype = "float16"
  with pytest.raises(ConfigError, match="model.dtype.*auto, float32, bfloat16"):
    denoisers.make_denoiser(cfg, 2)


@pytest.mark.parametrize("xla_flags,library", [
    ("", "ynn"), ("--xla_cpu_experimental_ynn_fusion_type=individual_dot,reduce", "eigen"),
    ("--xla_cpu_experimental_ynn_fusion_type=", "eigen"),
    ("--xla_cpu_experimental_ynn_fusion_type=individual_dot,individual_convolution", "ynn"),
    ("--xla_cpu_experimental_ynn_fusion_type=individual_dot "
     "--xla_cpu_experimental_ynn_fusion_type=individual_convolution", "ynn")])
def test_conv_library_is_read_from_xla_flags(xla_flags, library):
  assert hardware.xla_conv_library(xla_flags) == library


def _xla_flags_after_import(env_update: dict) -> str:
  env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", hardware.XLA_DEFAULTS_ENV)}
  env.update(env_update)
  code = ("import os, jaxsynth, jax; jax.devices(); "
          "print(os.environ.get('XLA_FLAGS', '') + '|' + jaxsynth.hardware.xla_conv_library())")
  out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                       check=True, timeout=120)
  return out.stdout.strip().splitlines()[-1]


def test_import_sets_the_conv_setting_unless_the_user_chose():
  ours = f"{hardware.YNN_FUSION_FLAG}={hardware.YNN_FUSIONS}"
  assert _xla_flags_after_import({}) == f"{ours}|eigen"
  kept = "--xla_force_host_platform_device_count=2"
  assert _xla_flags_after_import({"XLA_FLAGS": kept}) == f"{kept} {ours}|eigen"
  user = f"{hardware.YNN_FUSION_FLAG}=individual_dot,individual_convolution,reduce"
  assert _xla_flags_after_import({"XLA_FLAGS": user}) == f"{user}|ynn"
  assert _xla_flags_after_import({hardware.XLA_DEFAULTS_ENV: "0"}) == "|ynn"


@pytest.mark.parametrize("flags,chunk", [(AVX2, 2 * 2**20), (AVX512_BF16, 2 * 2**20),
                                         (AMX, 8 * 2**20), (set(), 2 * 2**20)])
def test_attention_chunk_is_chosen_by_cpu_class(flags, chunk):
  assert hardware.attention_chunk_bytes(flags) == chunk


@pytest.mark.parametrize("dtype,library,kernel,strides,pixels,upsample,expected", [
    (jnp.float32, "eigen", (3, 3), (1, 1), 784, False, "cpu_conv"),
    (jnp.float32, "eigen", (3, 3), (2, 2), 196, False, "cpu_conv"),
    (jnp.float32, "eigen", (1, 1), (1, 1), 256, False, "cpu_conv"),
    (jnp.float32, "eigen", (1, 1), (2, 2), 196, False, "im2col"),
    (jnp.float32, "eigen", (3, 3), (1, 1), 4, False, "im2col"),
    (jnp.float32, "eigen", (3, 3), (1, 1), 16, False, "cpu_conv"),
    (jnp.float32, "ynn", (3, 3), (1, 1), 784, False, "xla"),
    (jnp.float32, "ynn", (3, 3), (2, 2), 196, False, "im2col"),
    (jnp.float32, "ynn", (1, 1), (1, 1), 256, False, "im2col"),
    (jnp.float32, "ynn", (3, 3), (1, 1), 16, False, "im2col"),
    (jnp.bfloat16, "eigen", (3, 3), (1, 1), 784, False, "row"),
    (jnp.bfloat16, "eigen", (3, 3), (1, 1), 1024, True, "parity"),
    (jnp.bfloat16, "ynn", (3, 3), (2, 2), 196, False, "im2col"),
    (jnp.bfloat16, "eigen", (1, 1), (1, 1), 256, False, "im2col")])
def test_formulation_table(dtype, library, kernel, strides, pixels, upsample, expected):
  got = layers.conv_formulation(dtype, "auto", kernel, strides, pixels, upsample, "cpu", library)
  assert got == expected
  assert layers.conv_formulation(dtype, "auto", kernel, strides, pixels, upsample, "gpu",
                                 library) == "xla"
  for impl in ("xla", "im2col"):
    assert layers.conv_formulation(dtype, impl, kernel, strides, pixels, upsample, "cpu",
                                   library) == impl


def _xla_conv(x, w, stride, pad):
  return jax.lax.conv_general_dilated(x, w, (stride, stride), ((pad, pad), (pad, pad)),
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"))


@pytest.mark.parametrize("hw,k,stride,pad", [
    (1, 3, 1, 1), (2, 3, 1, 1), (2, 3, 2, 1), (3, 1, 1, 0), (4, 3, 1, 1), (5, 3, 2, 1),
    (7, 3, 2, 1), (8, 1, 2, 0), (8, 3, 1, 0), (6, 5, 1, 2), (9, 3, 2, 0)])
def test_auto_conv_module_equals_xla_conv_in_values_and_gradients(hw, k, stride, pad):
  """float32 `Conv(impl=auto)`, whatever formulation it picks for the shape, against lax.conv:
  output, input gradient and weight gradient to 1e-5 relative."""
  rng = np.random.default_rng(hw * 100 + k * 10 + stride)
  x = jnp.asarray(rng.normal(size=(3, hw, hw, 6)), jnp.float32)
  module = layers.Conv(5, (k, k), stride, padding=pad, use_bias=False)
  params = module.init(jax.random.PRNGKey(0), x)
  kernel = params["params"]["kernel"]
  out_hw = (hw + 2 * pad - k) // stride + 1
  cot = jnp.asarray(rng.normal(size=(3, out_hw, out_hw, 5)), jnp.float32)

  def ours(kernel, x):
    return jnp.sum(module.apply({"params": {"kernel": kernel}}, x) * cot)

  def reference(kernel, x):
    return jnp.sum(_xla_conv(x, kernel, stride, pad) * cot)

  got = jax.jit(jax.value_and_grad(ours, argnums=(0, 1)))(kernel, x)
  want = jax.jit(jax.value_and_grad(reference, argnums=(0, 1)))(kernel, x)
  for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
    scale = float(jnp.abs(b).max()) + 1e-30
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * scale)
