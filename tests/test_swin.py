"""Swin Transformer (and ViT) classifiers: window geometry, masks, forward shapes, registry."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsynth.config import base_config
from jaxsynth.models import registry, swin, vit

TINY = dict(embed_dim=16, depths=(2, 2), num_heads=(1, 2))


def random_variables(model, x, seed=0):
  """Variables shaped by eval_shape, filled with N(0, 0.1): no init compile, fast on CPU."""
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), x)
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda s: rng.normal(0, 0.1, s.shape).astype(np.float32), shapes)


def test_relative_position_index_2x2_by_hand():
  # Tokens (0,0),(0,1),(1,0),(1,1); index = (dy + 1) * 3 + (dx + 1) for offset token_i - token_j.
  expected = [[4, 3, 1, 0],
              [5, 4, 2, 1],
              [7, 6, 4, 3],
              [8, 7, 5, 4]]
  np.testing.assert_array_equal(swin.relative_position_index(2, 2), expected)
  index = swin.relative_position_index(7, 7)
  assert index.shape == (49, 49) and index.min() == 0 and index.max() == 13 * 13 - 1
  assert (np.diag(index) == 84).all()                     # offset (0, 0) is the table centre


def test_shifted_window_mask_blocks_across_regions():
  # 4x4 map, window 2, shift 1: regions by rows {0,1},{2},{3} x cols {0,1},{2},{3}.
  mask = swin.shifted_window_mask(4, 4, (2, 2), (1, 1))
  assert mask.shape == (4, 4, 4)
  np.testing.assert_array_equal(mask[0], 0)              # top-left window lies in one region
  # bottom-right window holds (2,2),(2,3),(3,2),(3,3): four regions, each sees only itself.
  np.testing.assert_array_equal(mask[3], np.where(np.eye(4), 0.0, swin.MASK_VALUE))
  # top-right window: (0,2),(0,3),(1,2),(1,3): columns 2 and 3 are different regions.
  same = np.array([[1, 0, 1, 0], [0, 1, 0, 1], [1, 0, 1, 0], [0, 1, 0, 1]], bool)
  np.testing.assert_array_equal(mask[1], np.where(same, 0.0, swin.MASK_VALUE))


def test_shifted_block_does_not_attend_across_regions():
  block = swin.SwinBlock(num_heads=2, window_size=2, shifted=True)
  x = jnp.asarray(np.random.default_rng(0).normal(size=(1, 4, 4, 8)), jnp.float32)
  variables = random_variables(block, x)
  apply = jax.jit(block.apply)
  base = np.asarray(apply(variables, x))
  delta = jnp.linspace(-3.0, 3.0, 8)                      # not constant: LayerNorm would remove it
  # After the cyclic shift by -1, original (0,0) and (3,3) share a window but not a region.
  far = np.asarray(apply(variables, x.at[0, 3, 3].add(delta)))
  np.testing.assert_allclose(far[0, 0, 0], base[0, 0, 0], atol=1e-6)
  # Original (1,1) and (2,2) share a window and a region: they do interact.
  near = np.asarray(apply(variables, x.at[0, 2, 2].add(delta)))
  assert np.abs(near[0, 1, 1] - base[0, 1, 1]).max() > 1e-3


def test_window_clamped_and_unshifted_when_map_not_larger():
  assert swin.window_and_shift((7, 7), 7, 3) == ((7, 7), (0, 0))
  assert swin.window_and_shift((4, 4), 7, 3) == ((4, 4), (0, 0))
  assert swin.window_and_shift((14, 14), 7, 3) == ((7, 7), (3, 3))
  # 28 px, patch 2, window 7, three stages: maps 14, 7, 4 -> tables (2w-1)^2 = 169, 169, 49.
  model = swin.SwinTransformer(3, embed_dim=8, depths=(2, 2, 2), num_heads=(1, 1, 1),
                               patch_size=2, window_size=7)
  params = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 28, 28, 1)))["params"]
  tables = [params[f"layers_{i}"]["blocks_1"]["attn"]["relative_position_bias_table"].shape
            for i in range(3)]
  assert tables == [(169, 1), (169, 1), (49, 1)]


@pytest.mark.parametrize("size,patch,window", [(28, 2, 7), (32, 2, 4), (64, 4, 4), (128, 4, 8),
                                                (224, 4, 7), (384, 4, 8), (512, 4, 8)])
def test_auto_patch_and_window_table(size, patch, window):
  assert swin.auto_sizes(size) == (patch, window)


@pytest.mark.parametrize("size", [28, 32, 64, 224])
def test_swin_t_forward_shapes(size):
  model = swin.swin("swin_t", 7)
  logits, features = jax.eval_shape(
      lambda x: model.init_with_output(jax.random.PRNGKey(0), x, return_features=True)[0],
      jnp.zeros((2, size, size, 3)))
  assert logits.shape == (2, 7) and features.shape == (2, 768)


def test_swin_pads_maps_not_a_multiple_of_the_window():
  # 40 px, patch 4: a 10x10 map with window 4 is padded to 12x12; odd maps pad before merging.
  model = swin.SwinTransformer(3, patch_size=4, window_size=4, **TINY)
  out = jax.eval_shape(lambda x: model.init_with_output(jax.random.PRNGKey(0), x)[0],
                       jnp.zeros((1, 40, 40, 3)))
  assert out.shape == (1, 3)


def test_tiny_swin_real_forward_28_and_32():
  model = swin.SwinTransformer(5, drop_path_rate=0.5, **TINY)
  x28 = jnp.asarray(np.random.default_rng(0).normal(size=(2, 28, 28, 1)), jnp.float32)
  variables = jax.jit(model.init)(jax.random.PRNGKey(0), x28)   # the real initialiser, once
  logits = jax.jit(model.apply)(variables, x28)
  assert logits.shape == (2, 5) and np.isfinite(np.asarray(logits)).all()

  x32 = jnp.asarray(np.random.default_rng(1).normal(size=(2, 32, 32, 3)), jnp.float32)
  variables = random_variables(model, x32)
  apply = jax.jit(model.apply, static_argnames="train")
  eval_out = np.asarray(apply(variables, x32, train=False))
  assert eval_out.shape == (2, 5) and np.isfinite(eval_out).all()
  # Stochastic depth is active in training only, and needs the "dropout" rng.
  train_out = np.asarray(apply(variables, x32, train=True, rngs={"dropout": jax.random.PRNGKey(3)}))
  assert not np.allclose(train_out, eval_out)


@pytest.mark.parametrize("name,features", [("swin_t", 768), ("swin_s", 768), ("swin_b", 1024),
                                           ("swin_l", 1536), ("vit_s", 384), ("vit_b", 768)])
def test_registry_builds(name, features):
  config = base_config("train_classifier")
  config.model.name = name
  model = registry.make_classifier(config.model, 4)
  logits, feats = jax.eval_shape(
      lambda x: model.init_with_output(jax.random.PRNGKey(0), x, return_features=True)[0],
      jnp.zeros((1, 224, 224, 3)))
  assert logits.shape == (1, 4) and feats.shape == (1, features)


def test_registry_overrides_and_errors():
  config = base_config("train_classifier")
  config.model.name = "swin_t"
  config.model.embed_dim, config.model.depths, config.model.num_heads = 8, (2,), (1,)
  config.model.patch_size, config.model.window_size = 2, 4
  model = registry.make_classifier(config.model, 3)
  assert (model.embed_dim, tuple(model.depths)) == (8, (2,))
  assert (model.patch_size, model.window_size) == (2, 4)
  config.model.num_heads = (1, 2)
  with pytest.raises(Exception, match="model.num_heads"):
    registry.make_classifier(config.model, 3)
  config.model.name = "swin_xl"
  with pytest.raises(Exception, match="swin_t"):
    registry.make_classifier(config.model, 3)


@pytest.mark.parametrize("size", [28, 32, 64])
def test_vit_small_images(size):
  model = vit.ViT(3, embed_dim=16, depth=1, num_heads=2)
  out = jax.eval_shape(lambda x: model.init_with_output(jax.random.PRNGKey(0), x)[0],
                       jnp.zeros((2, size, size, 1)))
  assert out.shape == (2, 3)
