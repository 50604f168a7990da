"""timm -> Flax weight import: safetensors I/O, round trips, adaptations, errors, timm parity."""

import json

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from jaxsynth.config import base_config
from jaxsynth.errors import CheckpointError
from jaxsynth.models import convert, resnet, swin, vit

TINY_SWIN = dict(embed_dim=16, depths=(2, 2), num_heads=(1, 2))


def random_variables(model, x, seed=0):
  """Variables shaped by eval_shape, filled at random (BatchNorm variances positive)."""
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), x)
  rng = np.random.default_rng(seed)
  variables = jax.tree.map(lambda s: rng.normal(0, 0.1, s.shape).astype(np.float32), shapes)
  if "batch_stats" in variables:
    variables["batch_stats"] = jax.tree_util.tree_map_with_path(
        lambda p, a: np.abs(a) + 0.5 if p[-1].key == "var" else a, variables["batch_stats"])
  return variables


def image(size, channels=3, seed=0):
  return jnp.asarray(np.random.default_rng(seed).normal(size=(2, size, size, channels)),
                     jnp.float32)


def shapes_of(model, x):
  """A zero-filled template of the model's variables (enough to list timm keys and shapes)."""
  return jax.tree.map(lambda s: np.zeros(s.shape, np.float32),
                      jax.eval_shape(model.init, jax.random.PRNGKey(0), x))


def test_safetensors_round_trip_and_layout(tmp_path):
  tensors = {"a": np.arange(6, dtype=np.float32).reshape(2, 3),
             "b": np.array([1, -2], np.int64), "c": np.ones((2, 2), ml_dtypes.bfloat16),
             "d": np.zeros((0, 4), np.float16)}
  path = str(tmp_path / "x.safetensors")
  convert.save_safetensors(path, tensors, {"format": "pt"})
  raw = open(path, "rb").read()
  n = int.from_bytes(raw[:8], "little")
  header = json.loads(raw[8:8 + n])
  assert n % 8 == 0 and header["a"] == {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]}
  assert header["__metadata__"] == {"format": "pt"}
  loaded = convert.load_safetensors(path)
  for k, v in tensors.items():
    assert loaded[k].dtype == v.dtype
    np.testing.assert_array_equal(loaded[k], v)
  # load_timm_state_dict upcasts half precision to float32.
  assert convert.load_timm_state_dict(path)["c"].dtype == np.float32


def test_bad_files_are_clear_errors(tmp_path):
  with pytest.raises(CheckpointError, match="do not exist"):
    convert.load_timm_state_dict(str(tmp_path / "missing.safetensors"))
  bad = tmp_path / "bad.safetensors"
  bad.write_bytes((10**9).to_bytes(8, "little") + b"{}")
  with pytest.raises(CheckpointError, match="header length"):
    convert.load_timm_state_dict(str(bad))
  path = str(tmp_path / "t.safetensors")
  convert.save_safetensors(path, {"w": np.ones(4, np.float32)})
  data = open(path, "rb").read()
  (tmp_path / "short.safetensors").write_bytes(data[:-4])
  with pytest.raises(CheckpointError, match="corrupt"):
    convert.load_timm_state_dict(str(tmp_path / "short.safetensors"))
  (tmp_path / "w.npz").write_bytes(b"")
  with pytest.raises(CheckpointError, match="unknown suffix"):
    convert.load_timm_state_dict(str(tmp_path / "w.npz"))
  try:
    import torch  # noqa: F401
  except ImportError:
    (tmp_path / "w.pth").write_bytes(b"")
    with pytest.raises(CheckpointError, match="safetensors"):
      convert.load_timm_state_dict(str(tmp_path / "w.pth"))


def test_timm_names_and_shapes():
  # Key sets of timm's resnet18 / swin_tiny_patch4_window7_224 (122 and 173 entries).
  sd = convert.resnet_to_timm(shapes_of(resnet.resnet(18, 1000, stem="imagenet"), image(64)))
  assert len(sd) == 122
  expected = {"conv1.weight": (64, 3, 7, 7), "bn1.running_var": (64,),
              "layer1.0.conv2.weight": (64, 64, 3, 3),
              "layer2.0.downsample.0.weight": (128, 64, 1, 1),
              "layer2.0.downsample.1.running_mean": (128,),
              "layer4.1.bn2.weight": (512,),
              "fc.weight": (1000, 512), "fc.bias": (1000,)}
  assert {k: sd[k].shape for k in expected} == expected
  sd = convert.resnet_to_timm(shapes_of(resnet.resnet(50, 1000, stem="imagenet"), image(64)))
  assert sd["layer1.0.conv3.weight"].shape == (256, 64, 1, 1)
  assert sd["layer1.0.downsample.1.weight"].shape == (256,) and "layer4.2.bn3.bias" in sd
  sd = convert.swin_to_timm(shapes_of(swin.swin("swin_t", 1000), image(224)))
  assert len(sd) == 173
  expected = {"patch_embed.proj.weight": (96, 3, 4, 4), "patch_embed.norm.weight": (96,),
              "layers.0.blocks.1.attn.relative_position_bias_table": (169, 3),
              "layers.0.blocks.0.attn.qkv.weight": (288, 96),
              "layers.1.downsample.reduction.weight": (192, 384),
              "layers.1.downsample.norm.weight": (384,),
              "layers.2.blocks.5.mlp.fc1.weight": (1536, 384),
              "layers.3.blocks.1.attn.proj.bias": (768,),
              "norm.weight": (768,),
              "head.fc.weight": (1000, 768)}
  assert {k: sd[k].shape for k in expected} == expected
  sd = convert.vit_to_timm(shapes_of(vit.vit("vit_s", 1000, patch_size=16), image(224)))
  expected = {"cls_token": (1, 1, 384), "pos_embed": (1, 197, 384),
              "patch_embed.proj.weight": (384, 3, 16, 16), "blocks.0.attn.qkv.weight": (1152, 384),
              "blocks.11.mlp.fc2.weight": (384, 1536), "norm.bias": (384,),
              "head.weight": (1000, 384)}
  assert {k: sd[k].shape for k in expected} == expected
  assert len(sd) == 4 + 12 * 12 + 4


def round_trip(tmp_path, model, x, to_timm, from_timm, rename=None):
  variables = random_variables(model, x, seed=0)
  state = to_timm(variables)
  if rename:
    state = {rename(k): v for k, v in state.items()}
  path = str(tmp_path / "w.safetensors")
  convert.save_safetensors(path, state)
  loaded, report = from_timm(convert.load_timm_state_dict(path), random_variables(model, x, 1))
  apply = jax.jit(model.apply)
  np.testing.assert_array_equal(np.asarray(apply(loaded, x)), np.asarray(apply(variables, x)))
  assert not report.reinitialised and not report.adapted
  return report


def test_resnet18_round_trip(tmp_path):
  model = resnet.resnet(18, 5, width=8, stem="imagenet")
  report = round_trip(tmp_path, model, image(32), convert.resnet_to_timm, convert.resnet_from_timm)
  assert len(report.loaded) == 102 and all("num_batches_tracked" in k for k in report.ignored)


def test_tiny_swin_round_trip_both_layouts(tmp_path):
  model = swin.SwinTransformer(5, **TINY_SWIN)
  round_trip(tmp_path, model, image(28), convert.swin_to_timm, convert.swin_from_timm)

  def old_layout(key):                      # original Swin / timm < 0.9 naming
    key = key.replace("head.fc.", "head.")
    if ".downsample." in key:
      i = int(key.split(".")[1])
      key = key.replace(f"layers.{i}.", f"layers.{i - 1}.", 1)
    return key
  round_trip(tmp_path, model, image(28), convert.swin_to_timm, convert.swin_from_timm, old_layout)


def test_tiny_vit_round_trip(tmp_path):
  model = vit.ViT(5, embed_dim=16, depth=2, num_heads=2)
  round_trip(tmp_path, model, image(28), convert.vit_to_timm, convert.vit_from_timm)


def test_head_reinitialised_and_gray_input_adapted():
  rgb = resnet.resnet(18, 5, width=8, stem="imagenet")
  state = convert.resnet_to_timm(random_variables(rgb, image(32)))
  gray = resnet.resnet(18, 3, width=8, stem="imagenet")
  template = random_variables(gray, image(32, 1), seed=1)
  loaded, report = convert.resnet_from_timm(state, template)
  assert report.reinitialised == ["head"] and "Conv_0/kernel" in report.adapted[0]
  np.testing.assert_array_equal(loaded["params"]["head"]["kernel"],
                                template["params"]["head"]["kernel"])
  # Summing the RGB kernel over channels: conv(gray) equals the RGB conv of the gray image x3.
  rgb_kernel = state["conv1.weight"].transpose(2, 3, 1, 0)
  np.testing.assert_allclose(loaded["params"]["Conv_0"]["kernel"],
                             rgb_kernel.sum(axis=2, keepdims=True), rtol=1e-6)
  np.testing.assert_array_equal(loaded["params"]["BasicBlock_3"]["Conv_1"]["kernel"],
                                state["layer2.1.conv2.weight"].transpose(2, 3, 1, 0))


def test_swin_224_weights_into_a_28px_model():
  # Patch 4 -> 2 is resampled; 13x13 tables are centre-cropped for the clamped 4x4 window.
  big = swin.SwinTransformer(10, patch_size=4, window_size=7, embed_dim=16, depths=(2, 2, 2),
                             num_heads=(1, 1, 2))
  state = convert.swin_to_timm(random_variables(big, image(224)))
  small = swin.SwinTransformer(3, patch_size=2, window_size=7, embed_dim=16, depths=(2, 2, 2),
                               num_heads=(1, 1, 2))
  loaded, report = convert.swin_from_timm(state, random_variables(small, image(28, 1)))
  assert report.reinitialised == ["head"]
  adapted = " ".join(report.adapted)
  assert "patch_embed/proj/kernel" in adapted and "layers_2/blocks_0/attn" in adapted
  table = state["layers.2.blocks.0.attn.relative_position_bias_table"].reshape(13, 13, 2)
  np.testing.assert_array_equal(
      loaded["params"]["layers_2"]["blocks_0"]["attn"]["relative_position_bias_table"],
      table[3:10, 3:10].reshape(49, 2))
  assert np.isfinite(np.asarray(jax.jit(small.apply)(loaded, image(28, 1)))).all()


def test_relative_table_crop_keeps_offsets():
  offsets = np.stack(np.meshgrid(np.arange(-6, 7), np.arange(-6, 7), indexing="ij"), -1)
  table = offsets.reshape(169, 2).astype(np.float32)           # "bias" = its own (dy, dx)
  cropped = convert.resize_relative_bias_table(table, 49).reshape(7, 7, 2)
  np.testing.assert_array_equal(cropped[..., 0], np.arange(-3, 4)[:, None].repeat(7, 1))
  np.testing.assert_array_equal(cropped[..., 1], np.arange(-3, 4)[None, :].repeat(7, 0))
  assert convert.resize_relative_bias_table(table, 25 * 25).shape == (625, 2)
  kernel = np.random.default_rng(0).normal(size=(4, 4, 3, 8)).astype(np.float32)
  assert convert.resample_patch_kernel(kernel, (2, 2)).shape == (2, 2, 3, 8)


def test_unmatched_keys_listed():
  model = swin.SwinTransformer(5, **TINY_SWIN)
  state = convert.swin_to_timm(random_variables(model, image(28)))
  state.pop("layers.1.blocks.0.norm1.weight")
  state["layers.0.blocks.0.attn.extra"] = np.zeros(3, np.float32)
  state["norm.bias"] = np.zeros(7, np.float32)
  with pytest.raises(CheckpointError) as info:
    convert.swin_from_timm(state, random_variables(model, image(28)))
  message = str(info.value)
  assert "layers.1.blocks.0.norm1.weight" in message and "layers.0.blocks.0.attn.extra" in message
  assert "norm/bias: checkpoint (7,) vs model (32,)" in message


def test_apply_pretrained(tmp_path):
  config = base_config("train_classifier")
  config.model.name, config.model.width, config.model.stem = "resnet18", 8, "imagenet"
  model = resnet.resnet(18, 4, width=8, stem="imagenet")
  variables = random_variables(model, image(32))
  assert convert.apply_pretrained(config.model, variables) is variables    # "" = no-op
  source = random_variables(model, image(32), seed=5)
  config.model.pretrained = str(tmp_path / "r18.safetensors")
  convert.save_safetensors(config.model.pretrained, convert.resnet_to_timm(source))
  loaded = convert.apply_pretrained(config.model, variables)
  np.testing.assert_array_equal(loaded["batch_stats"]["BatchNorm_0"]["var"],
                                source["batch_stats"]["BatchNorm_0"]["var"])
  config.model.name = "swin_t"
  with pytest.raises(CheckpointError, match="does not match this Swin"):
    convert.apply_pretrained(config.model, variables)


# ----------------------------------------------------------------------------- real timm


def _timm_state(model):
  return {k: v.detach().float().numpy() if v.is_floating_point() else v.numpy()
          for k, v in model.state_dict().items()}


@pytest.mark.parametrize("arch", ["resnet18", "resnet50", "swin_tiny_patch4_window7_224"])
def test_parity_with_timm(arch, tmp_path):
  torch = pytest.importorskip("torch")
  timm = pytest.importorskip("timm")
  torch.manual_seed(0)
  size = 224 if arch.startswith("swin") else 64
  kwargs = {"drop_path_rate": 0.0} if arch.startswith("swin") else {}
  reference = timm.create_model(arch, pretrained=False, num_classes=7, **kwargs).eval()
  with torch.no_grad():                       # non-trivial BatchNorm statistics
    for name, buf in reference.named_buffers():
      if name.endswith("running_mean"):
        buf.normal_(0, 0.1)
      elif name.endswith("running_var"):
        buf.uniform_(0.5, 1.5)
  x = np.random.default_rng(0).normal(size=(2, 3, size, size)).astype(np.float32)
  with torch.no_grad():
    expected = reference(torch.from_numpy(x)).numpy()
  if arch.startswith("swin"):
    model, from_timm = swin.swin("swin_t", 7, patch_size=4, window_size=7), convert.swin_from_timm
  else:
    model = resnet.resnet(int(arch[6:]), 7, stem="imagenet")
    from_timm = convert.resnet_from_timm
  path = str(tmp_path / "w.safetensors")
  convert.save_safetensors(path, _timm_state(reference))
  x_nhwc = jnp.asarray(x.transpose(0, 2, 3, 1))
  variables, report = from_timm(convert.load_timm_state_dict(path), shapes_of(model, x_nhwc))
  assert not report.reinitialised
  out = np.asarray(jax.jit(model.apply)(variables, x_nhwc))
  np.testing.assert_allclose(out, expected, rtol=1e-3, atol=1e-3)


def test_model_pretrained_loads_the_weights_into_the_train_state(tmp_path):
  """`model.pretrained` replaces the fresh init in the classifier's train state."""
  import jax
  from jaxsynth.models import convert
  from jaxsynth.models.registry import make_classifier
  from jaxsynth.recipes import classifier as classifier_lib
  from tests.helpers import tiny_config

  config = tiny_config(model__stem="imagenet", data__image_size=16)
  setup = classifier_lib.build_setup(config)
  donor = setup.model.init(jax.random.PRNGKey(7), np.zeros((1, *setup.input_shape), np.float32))
  path = str(tmp_path / "resnet18.safetensors")
  convert.save_safetensors(path, convert.resnet_to_timm(jax.device_get(donor)))
  config.model.pretrained = path
  plan = classifier_lib.plan_training(config, setup)
  for got, want in zip(jax.tree.leaves(plan.state.params), jax.tree.leaves(donor["params"])):
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-6, atol=1e-7)
  for got, want in zip(jax.tree.leaves(plan.state.model_state),
                       jax.tree.leaves(donor["batch_stats"])):
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-6, atol=1e-7)
