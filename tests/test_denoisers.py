"""UNet and DiT denoisers: shapes, conditioning, adaLN-Zero init, dtypes, reference size/FLOPs."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsynth.errors import ConfigError
from jaxsynth.models import attention, denoisers, embeddings
from jaxsynth.models.dit import dit_config
from jaxsynth.models.embeddings import (dot_product_attention, sincos_pos_embed_2d,
                                        timestep_embedding)

NUM_CLASSES = 3

# The issue-#4 reference, diffusers UNet2DModel(sample_size=32, block_out_channels=(64,128,128),
# layers_per_block=2, Down/AttnDown/Down, attention_head_dim=8, no mid attention,
# num_class_embeds=2), counted layer by layer by hand: 6,406,403 parameters; 1,581,645,824
# multiply-adds in convs, attention projections and attention matmuls (time-embedding MLPs
# excluded) = 3.163 GFLOP. Our table has one more row (the null label): +256 parameters.
REFERENCE_PARAMS = 6.4e6
REFERENCE_GFLOPS = 3.16


def tiny_config(name: str, dtype: str = "float32"):
  """A small denoiser config that runs at 8-32 px in well under a second."""
  cfg = denoisers.denoiser_model_config()
  cfg.name = name
  cfg.dtype = dtype
  cfg.unet.update(channels=(16, 32), res_blocks=1, attn_resolutions=(8, 4), head_dim=8,
                  norm_groups=8, mid_attention=True, dropout=0.1)
  cfg.dit.update(variant="DiT-S/2", hidden_size=32, depth=2, num_heads=2, dropout=0.1)
  return cfg


@functools.lru_cache(maxsize=None)
def tiny_model(name: str, dtype: str = "float32"):
  """The tiny model and its jitted apply, shared by the tests so each shape compiles once."""
  model = denoisers.make_denoiser(tiny_config(name, dtype), NUM_CLASSES)
  return model, jax.jit(model.apply, static_argnames="train")


def inputs(size: int, channels: int = 3, seed: int = 0):
  """A batch of NUM_CLASSES + 1 random (x_t, t, labels); the last label is the null label."""
  rng = np.random.default_rng(seed)
  batch = NUM_CLASSES + 1
  x = jnp.asarray(rng.normal(size=(batch, size, size, channels)), jnp.float32)
  t = jnp.asarray(rng.integers(0, 1000, size=batch), jnp.int32)
  return x, t, jnp.arange(batch, dtype=jnp.int32)


def random_params(model, x, t, labels, seed: int = 1):
  """Random non-zero parameters of the right shapes, filled on the host.

  `model.init` is avoided on purpose: XLA:CPU takes ~0.5-1 s to compile each parameter's
  random initialiser, so a real init of a tiny UNet costs ~20 s; eval_shape costs nothing.
  Random (not zero-initialised) output layers also let the conditioning show in the output.
  """
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), x, t, labels)
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    name = jax.tree_util.keystr(path)
    if len(leaf.shape) >= 2:                              # kernels and tables
      value = rng.normal(size=leaf.shape) / np.sqrt(np.prod(leaf.shape[:-1]))
    else:                                                 # biases and norm scales
      value = 0.1 * rng.normal(size=leaf.shape) + ("scale" in name)
    return jnp.asarray(value, leaf.dtype)

  return jax.tree_util.tree_map_with_path(fill, shapes)


@pytest.mark.parametrize("name", ["unet", "dit"])
def test_forward_shapes_at_8_16_32_px_float_timesteps_and_train_mode_dropout(name):
  model, apply = tiny_model(name)
  # One compile per size: 8 px as in the other tests, 16 px with float t, 32 px in train mode.
  cases = ((8, jnp.int32, False), (16, jnp.float32, False), (32, jnp.int32, True))
  for size, t_dtype, train in cases:
    x, t, labels = inputs(size)
    params = random_params(model, x, t, labels)
    rngs = {"dropout": jax.random.PRNGKey(3)} if train else None
    out = apply(params, x, t.astype(t_dtype), labels, train=train, rngs=rngs)
    assert out.shape == x.shape and out.dtype == jnp.float32
    assert np.all(np.isfinite(out))
  other = apply(params, x, t, labels, train=True, rngs={"dropout": jax.random.PRNGKey(4)})
  assert np.abs(other - out).max() > 1e-4                # dropout is on in train mode


@pytest.mark.parametrize("name", ["unet", "dit"])
def test_learn_sigma_doubles_the_output_channels(name):
  cfg = tiny_config(name)
  cfg.learn_sigma = True
  model = denoisers.make_denoiser(cfg, NUM_CLASSES)
  x, t, labels = inputs(8, channels=1)
  out, _ = jax.eval_shape(model.init_with_output, jax.random.PRNGKey(0), x, t, labels)
  assert out.shape == (NUM_CLASSES + 1, 8, 8, 2)


def test_dit_adaln_zero_init_outputs_exactly_zero():
  model, apply = tiny_model("dit")
  x, t, labels = inputs(8)
  params = jax.jit(model.init)(jax.random.PRNGKey(0), x, t, labels)["params"]
  # The paper zero-initialises every block's adaLN modulation and the final linear layer.
  for i in range(2):
    assert not np.any(params[f"block_{i}"]["adaLN_modulation"]["kernel"])
  assert not np.any(params["final_adaLN_modulation"]["kernel"])
  assert not np.any(params["final_linear"]["kernel"]) and not np.any(params["final_linear"]["bias"])
  assert np.any(params["block_0"]["attn"]["qkv"]["kernel"])
  assert "pos_embed" not in params                      # fixed, not learned
  out = apply({"params": params}, x, t, labels)
  assert np.array_equal(out, np.zeros_like(out))


@pytest.mark.parametrize("name", ["unet", "dit"])
def test_labels_null_label_and_timestep_change_the_output(name):
  model, apply = tiny_model(name)
  x, t, labels = inputs(8)
  x = jnp.broadcast_to(x[:1], x.shape)                  # one image, every label incl. null
  t = jnp.full_like(t, 500)
  params = random_params(model, x, t, labels)
  out = np.asarray(apply(params, x, t, labels))
  assert np.all(np.isfinite(out))
  for i in range(len(out)):
    for j in range(i):
      assert np.abs(out[i] - out[j]).max() > 1e-3, (i, j)
  later = np.asarray(apply(params, x, t + 100, labels))
  assert np.abs(later - out).max() > 1e-3


@pytest.mark.parametrize("name", ["unet", "dit"])
def test_bfloat16_compute_keeps_float32_params(name):
  model32, apply32 = tiny_model(name)
  model16, apply16 = tiny_model(name, "bfloat16")
  x, t, labels = inputs(8)
  shapes = jax.eval_shape(model16.init, jax.random.PRNGKey(0), x, t, labels)
  assert {p.dtype for p in jax.tree.leaves(shapes)} == {jnp.dtype(jnp.float32)}
  params = random_params(model16, x, t, labels)
  out16, out32 = apply16(params, x, t, labels), apply32(params, x, t, labels)
  assert out16.dtype == jnp.float32
  scale = np.abs(out32).max()
  assert scale > 0 and np.abs(out16 - out32).max() < 0.1 * scale


def test_reference_unet_matches_the_diffusers_benchmark_size_and_flops():
  model = denoisers.make_denoiser(denoisers.reference_unet_config(), 2)
  params = denoisers.abstract_params(model, (32, 32, 3))
  n = denoisers.count_params(params)
  assert n == 6_406_403 + 256                           # exact, see the module docstring
  assert abs(n / REFERENCE_PARAMS - 1) < 0.05
  flops = denoisers.forward_flops(model, (32, 32, 3))
  assert abs(flops["analytic"] / 1e9 / REFERENCE_GFLOPS - 1) < 0.01
  # XLA's count skips zero-padded conv taps (-5%), counts the CPU's parity upsample convs at
  # 4/9 of their multiply-adds (-5%) and adds elementwise ops (+1%).
  assert 0.85 < flops["xla"] / 1e9 / REFERENCE_GFLOPS < 1.05
  # The count is the model's, not the formulation's: the CPU bf16 path's dots also multiply
  # padding rows, which must not inflate the FLOPs the benchmark divides by.
  bf16 = denoisers.reference_unet_config()
  bf16.dtype = "bfloat16"
  bf16_model = denoisers.make_denoiser(bf16, 2)
  assert denoisers.forward_flops(bf16_model, (32, 32, 3))["analytic"] == flops["analytic"]
  # The attention layout of the reference: 16 heads of 8 channels, only at 16x16, none mid.
  attn = [k for k in params["params"] if "attn" in k]
  assert sorted(attn) == ["down_1_attn_0", "down_1_attn_1", "up_1_attn_0", "up_1_attn_1",
                          "up_1_attn_2"]


def test_dit_variants_match_the_paper():
  assert dit_config("DiT-XL/2") == dict(depth=28, hidden_size=1152, num_heads=16, patch_size=2)
  assert dit_config("DiT-S/8") == dict(depth=12, hidden_size=384, num_heads=6, patch_size=8)
  with pytest.raises(ValueError):
    dit_config("DiT-M/2")
  cfg = denoisers.denoiser_model_config()
  cfg.name, cfg.dit.variant = "dit", "DiT-S/2"
  model = denoisers.make_denoiser(cfg, 1000)
  # Table 4 of the paper: DiT-S/2 on 32x32x4 latents, 6.06 GFLOPs (multiply-adds).
  gmacs = denoisers.forward_flops(model, (32, 32, 4))["analytic"] / 2e9
  assert abs(gmacs / 6.06 - 1) < 0.01
  # The official DiT-XL/2 (learn_sigma, 1000 classes) has 675,129,632 parameters, counting its
  # frozen 256 x 1152 position table, which here is a constant rather than a parameter.
  cfg.dit.variant, cfg.learn_sigma = "DiT-XL/2", True
  params = denoisers.abstract_params(denoisers.make_denoiser(cfg, 1000), (32, 32, 4))
  assert denoisers.count_params(params) + 256 * 1152 == 675_129_632


def test_embeddings_follow_the_reference_formulas():
  emb = np.asarray(timestep_embedding(jnp.array([0, 7]), 8))
  freqs = np.exp(-np.log(10000.0) * np.arange(4) / 4)
  np.testing.assert_allclose(emb[1], np.concatenate([np.cos(7 * freqs), np.sin(7 * freqs)]),
                             rtol=1e-5)
  pos = sincos_pos_embed_2d(8, 2, 3)                   # 2 rows x 3 cols, row-major tokens
  assert pos.shape == (6, 8)
  np.testing.assert_allclose(pos[4, :2], [np.sin(1.0), np.sin(0.01)], rtol=1e-6)  # col 1
  np.testing.assert_allclose(pos[4, 4:6], [np.sin(1.0), np.sin(0.01)], rtol=1e-6)  # row 1


@pytest.mark.parametrize("impl,chunk_bytes", [
    ("auto", None), ("plain", None), ("chunked", None), ("chunked", 4 * 5 * 5 * 2),
    ("chunked", 1)])
def test_attention_equals_plain_softmax_attention_values_and_gradients(monkeypatch, impl,
                                                                       chunk_bytes):
  """Every attention formulation (CPU's chunked one with its own VJP, in one chunk, in chunks
  of 2 heads and of 1) against softmax(q k / sqrt d) v, values and gradients."""
  if chunk_bytes is not None:
    monkeypatch.setattr(attention, "CHUNK_BYTES", chunk_bytes)
  dot_product_attention = {"auto": embeddings.dot_product_attention,
                           "plain": embeddings.plain_attention,
                           "chunked": attention.chunked_attention}[impl]
  rng = np.random.default_rng(0)
  q, k, v = (jnp.asarray(3 * rng.normal(size=(2, 5, 3, 4)), jnp.float32) for _ in range(3))

  def plain(q, k, v):
    weights = jax.nn.softmax(jnp.einsum("bqhd,bkhd->bhqk", q, k) / 2.0, axis=-1)
    return jnp.einsum("bhqk,bkhd->bqhd", weights, v)

  np.testing.assert_allclose(dot_product_attention(q, k, v), plain(q, k, v), rtol=1e-5, atol=1e-5)
  loss = lambda f: lambda *a: jnp.sum(jnp.sin(f(*a)))
  grad = lambda f: jax.jit(jax.grad(loss(f), (0, 1, 2)))(q, k, v)
  for a, b in zip(grad(dot_product_attention), grad(plain)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
  out16 = dot_product_attention(*(a.astype(jnp.bfloat16) for a in (q, k, v)))
  assert out16.dtype == jnp.bfloat16
  np.testing.assert_allclose(out16.astype(jnp.float32), plain(q, k, v), atol=0.1)


def test_bad_configs_are_clear_errors():
  cfg = tiny_config("unet")
  with pytest.raises(ConfigError, match="model.name"):
    denoisers.make_denoiser(tiny_config("vit"), 2)
  cfg.unet.norm_groups = 5
  with pytest.raises(ConfigError, match="norm_groups"):
    denoisers.make_denoiser(cfg, 2)
  cfg = tiny_config("dit")
  cfg.dit.variant = "DiT-S/3"
  with pytest.raises(ConfigError, match="variant"):
    denoisers.make_denoiser(cfg, 2)
  cfg = tiny_config("unet", "float16")
  with pytest.raises(ConfigError, match="model.dtype"):
    denoisers.make_denoiser(cfg, 2)
