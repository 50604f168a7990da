"""FID Inception-v3: shapes, PyTorch-exact bilinear resize, weight loading, errors, torch parity."""

import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from jaxsynth.errors import CheckpointError
from jaxsynth.models import convert, inception

STAT_NAMES = {"mean": "running_mean", "var": "running_var"}


def random_state_dict(seed=0):
  """A random pytorch-fid-layout state dict built from the Flax template (layout inverted here)."""
  rng = np.random.default_rng(seed)
  state = {}
  for collection, tree in inception.fid_inception_template().items():
    for path, leaf in traverse_util.flatten_dict(tree).items():
      value = rng.normal(0, 0.1, leaf.shape).astype(np.float32)
      if path[-1] == "var":
        value = np.abs(value) + 0.5
      if value.ndim == 4:
        value = value.transpose(3, 2, 0, 1)             # HWIO -> OIHW
      elif value.ndim == 2:
        value = value.T
      name = STAT_NAMES[path[-1]] if collection == "batch_stats" else (
          "bias" if path[-1] == "bias" else "weight")
      state[".".join([*path[:-1], name])] = value
      if path[-1] == "var":
        state[".".join([*path[:-1], "num_batches_tracked"])] = np.array(7, np.int64)
  return state


def torch_bilinear_reference(x, out_h, out_w):
  """NHWC numpy resize by PyTorch's align_corners=False rule, as interpolation matrices."""
  def matrix(n_in, n_out):
    m = np.zeros((n_out, n_in))
    for d in range(n_out):
      src = max((d + 0.5) * n_in / n_out - 0.5, 0.0)
      i0 = int(np.floor(src))
      i1 = min(i0 + 1, n_in - 1)
      m[d, i0] += 1 - (src - i0)
      m[d, i1] += src - i0
    return m
  x = np.einsum("oh,nhwc->nowc", matrix(x.shape[1], out_h), x.astype(np.float64))
  return np.einsum("ow,nhwc->nhoc", matrix(x.shape[2], out_w), x)


def test_module_output_shapes_and_values():
  state = random_state_dict()
  variables = inception.variables_from_state_dict(state)
  x = jnp.asarray(np.random.default_rng(1).uniform(-1, 1, (2, 75, 83, 3)), jnp.float32)
  pool3, logits = jax.jit(inception.FIDInceptionV3().apply)(variables, x)
  assert pool3.shape == (2, inception.FEATURES) and pool3.dtype == jnp.float32
  assert logits.shape == (2, inception.NUM_CLASSES) and logits.dtype == jnp.float32
  assert np.isfinite(np.asarray(logits)).all() and (np.asarray(pool3) >= 0).all()
  fc = state["fc.weight"]
  np.testing.assert_allclose(logits, np.asarray(pool3) @ fc.T + state["fc.bias"], atol=1e-4)
  np.testing.assert_allclose(inception.unbiased_logits(variables, pool3), logits - state["fc.bias"],
                             atol=1e-4)
  with pytest.raises(ValueError, match="75"):
    inception.FIDInceptionV3().apply(variables, x[:, :74])


def test_pooling_helpers_padding_semantics():
  x = jnp.ones((1, 4, 4, 1))
  np.testing.assert_allclose(inception.avg_pool_3x3(x, count_include_pad=False), 1.0)
  included = np.asarray(inception.avg_pool_3x3(x, count_include_pad=True))[0, :, :, 0]
  assert included[0, 0] == pytest.approx(4 / 9) and included[0, 1] == pytest.approx(6 / 9)
  y = -jnp.arange(16.0).reshape(1, 4, 4, 1)             # negative: max padding must be -inf
  assert float(inception.max_pool_3x3(y, strides=1)[0, 0, 0, 0]) == 0.0
  assert float(inception.max_pool_3x3(y, strides=1)[0, 3, 3, 0]) == -10.0
  assert inception.max_pool_3x3(jnp.zeros((1, 9, 8, 1))).shape == (1, 4, 3, 1)


@pytest.mark.parametrize("in_hw,out_hw", [((7, 5), (299, 299)), ((64, 48), (29, 17)),
                                          ((299, 299), (299, 299)), ((13, 40), (20, 9))])
def test_resize_matches_pytorch_formula(in_hw, out_hw):
  x = np.random.default_rng(0).uniform(size=(2, *in_hw, 3)).astype(np.float32)
  got = np.asarray(jax.jit(inception.resize_bilinear, static_argnums=1)(x, out_hw))
  np.testing.assert_allclose(got, torch_bilinear_reference(x, *out_hw), atol=1e-5)  # f32 taps
  if in_hw == out_hw:
    np.testing.assert_array_equal(got, x)


def test_preprocess_uint8_gray_and_range():
  images = np.random.default_rng(0).integers(0, 256, (2, 32, 24, 1), dtype=np.uint8)
  out = np.asarray(inception.preprocess(images))
  assert out.shape == (2, 299, 299, 3) and out.dtype == np.float32
  np.testing.assert_array_equal(out[..., 0], out[..., 2])
  expected = 2 * torch_bilinear_reference(images / 255.0, 299, 299) - 1
  np.testing.assert_allclose(out[..., :1], expected, atol=2e-5)
  np.testing.assert_allclose(inception.preprocess(images / 255.0), out, atol=1e-6)
  with pytest.raises(ValueError, match="shape"):
    inception.preprocess(np.zeros((2, 8, 8, 4)))


def test_weights_round_trip_npz_and_safetensors(tmp_path):
  state = random_state_dict()
  inception.save_state_dict_npz(state, str(tmp_path / "fid.npz"))
  with np.load(tmp_path / "fid.npz") as saved:
    assert "fc.weight" in saved.files and not any(k.endswith("tracked") for k in saved.files)
  variables = inception.load_pytorch_fid_weights(str(tmp_path / "fid.npz"))
  assert set(variables) == {"params", "batch_stats"}
  bn = variables["batch_stats"]["Mixed_7c"]["branch3x3dbl_3b"]["bn"]
  np.testing.assert_array_equal(bn["var"], state["Mixed_7c.branch3x3dbl_3b.bn.running_var"])
  conv = variables["params"]["Mixed_6b"]["branch7x7_2"]["conv"]["kernel"]
  assert conv.shape == (1, 7, 128, 128)
  np.testing.assert_array_equal(conv,
                                state["Mixed_6b.branch7x7_2.conv.weight"].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(variables["params"]["fc"]["kernel"], state["fc.weight"].T)
  flat = traverse_util.flatten_dict(variables)
  assert len(flat) == sum(not k.endswith("tracked") for k in state)
  convert.save_safetensors(str(tmp_path / "fid.safetensors"), state)
  again = inception.load_pytorch_fid_weights(str(tmp_path / "fid.safetensors"))
  for path, value in traverse_util.flatten_dict(again).items():
    np.testing.assert_array_equal(value, flat[path])


def test_weights_errors_name_keys_and_path(tmp_path, monkeypatch):
  state = random_state_dict()
  del state["Mixed_5b.branch_pool.bn.running_mean"]
  state["Conv2d_1a_3x3.conv.weight"] = np.zeros((32, 3, 5, 5), np.float32)
  state["AuxLogits.fc.weight"] = np.zeros((1008, 768), np.float32)
  path = str(tmp_path / "bad.npz")
  inception.save_state_dict_npz(state, path)
  with pytest.raises(CheckpointError) as info:
    inception.load_pytorch_fid_weights(path)
  message = str(info.value)
  for text in (path, "1 missing: Mixed_5b.branch_pool.bn.running_mean",
               "Conv2d_1a_3x3.conv.weight (32, 3, 5, 5) (needs (32, 3, 3, 3))",
               "1 unexpected: AuxLogits.fc.weight"):
    assert text in message
  with pytest.raises(CheckpointError, match="nowhere.pth.*do not exist"):
    inception.load_pytorch_fid_weights(str(tmp_path / "nowhere.pth"))
  (tmp_path / "w.pth").write_bytes(b"")
  monkeypatch.setitem(sys.modules, "torch", None)    # import torch -> ImportError
  with pytest.raises(CheckpointError, match="pip install torch.*npz"):
    inception.load_pytorch_fid_weights(str(tmp_path / "w.pth"))


# ----------------------------------------------------------------------------- torch parity


def torch_fid_inception():
  """pytorch-fid's fid_inception_v3() in plain torch.nn (no torchvision), randomly initialised."""
  import torch  # pylint: disable=import-outside-toplevel
  from torch import nn  # pylint: disable=import-outside-toplevel
  import torch.nn.functional as F  # pylint: disable=import-outside-toplevel

  class Conv(nn.Module):
    def __init__(self, cin, cout, kernel_size=1, **kwargs):
      super().__init__()
      self.conv = nn.Conv2d(cin, cout, kernel_size, bias=False, **kwargs)
      self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x):
      return F.relu(self.bn(self.conv(x)))

  def avg(x):
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)

  class A(nn.Module):
    def __init__(self, cin, pool_features):
      super().__init__()
      self.branch1x1 = Conv(cin, 64)
      self.branch5x5_1, self.branch5x5_2 = Conv(cin, 48), Conv(48, 64, 5, padding=2)
      self.branch3x3dbl_1 = Conv(cin, 64)
      self.branch3x3dbl_2 = Conv(64, 96, 3, padding=1)
      self.branch3x3dbl_3 = Conv(96, 96, 3, padding=1)
      self.branch_pool = Conv(cin, pool_features)

    def forward(self, x):
      d = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
      return torch.cat([self.branch1x1(x), self.branch5x5_2(self.branch5x5_1(x)), d,
                        self.branch_pool(avg(x))], 1)

  class B(nn.Module):
    def __init__(self, cin):
      super().__init__()
      self.branch3x3 = Conv(cin, 384, 3, stride=2)
      self.branch3x3dbl_1 = Conv(cin, 64)
      self.branch3x3dbl_2 = Conv(64, 96, 3, padding=1)
      self.branch3x3dbl_3 = Conv(96, 96, 3, stride=2)

    def forward(self, x):
      d = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
      return torch.cat([self.branch3x3(x), d, F.max_pool2d(x, 3, stride=2)], 1)

  class C(nn.Module):
    def __init__(self, cin, c7):
      super().__init__()
      self.branch1x1 = Conv(cin, 192)
      self.branch7x7_1 = Conv(cin, c7)
      self.branch7x7_2 = Conv(c7, c7, (1, 7), padding=(0, 3))
      self.branch7x7_3 = Conv(c7, 192, (7, 1), padding=(3, 0))
      self.branch7x7dbl_1 = Conv(cin, c7)
      self.branch7x7dbl_2 = Conv(c7, c7, (7, 1), padding=(3, 0))
      self.branch7x7dbl_3 = Conv(c7, c7, (1, 7), padding=(0, 3))
      self.branch7x7dbl_4 = Conv(c7, c7, (7, 1), padding=(3, 0))
      self.branch7x7dbl_5 = Conv(c7, 192, (1, 7), padding=(0, 3))
      self.branch_pool = Conv(cin, 192)

    def forward(self, x):
      s = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
      d = self.branch7x7dbl_1(x)
      for layer in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4,
                    self.branch7x7dbl_5):
        d = layer(d)
      return torch.cat([self.branch1x1(x), s, d, self.branch_pool(avg(x))], 1)

  class D(nn.Module):
    def __init__(self, cin):
      super().__init__()
      self.branch3x3_1, self.branch3x3_2 = Conv(cin, 192), Conv(192, 320, 3, stride=2)
      self.branch7x7x3_1 = Conv(cin, 192)
      self.branch7x7x3_2 = Conv(192, 192, (1, 7), padding=(0, 3))
      self.branch7x7x3_3 = Conv(192, 192, (7, 1), padding=(3, 0))
      self.branch7x7x3_4 = Conv(192, 192, 3, stride=2)

    def forward(self, x):
      s = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
      return torch.cat([self.branch3x3_2(self.branch3x3_1(x)), s,
                        F.max_pool2d(x, 3, stride=2)], 1)

  class E(nn.Module):
    def __init__(self, cin, max_pool):
      super().__init__()
      self.max_pool = max_pool
      self.branch1x1 = Conv(cin, 320)
      self.branch3x3_1 = Conv(cin, 384)
      self.branch3x3_2a = Conv(384, 384, (1, 3), padding=(0, 1))
      self.branch3x3_2b = Conv(384, 384, (3, 1), padding=(1, 0))
      self.branch3x3dbl_1 = Conv(cin, 448)
      self.branch3x3dbl_2 = Conv(448, 384, 3, padding=1)
      self.branch3x3dbl_3a = Conv(384, 384, (1, 3), padding=(0, 1))
      self.branch3x3dbl_3b = Conv(384, 384, (3, 1), padding=(1, 0))
      self.branch_pool = Conv(cin, 192)

    def forward(self, x):
      s = self.branch3x3_1(x)
      d = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
      pool = (F.max_pool2d(x, 3, stride=1, padding=1) if self.max_pool else avg(x))
      return torch.cat([self.branch1x1(x), self.branch3x3_2a(s), self.branch3x3_2b(s),
                        self.branch3x3dbl_3a(d), self.branch3x3dbl_3b(d),
                        self.branch_pool(pool)], 1)

  class Net(nn.Module):
    def __init__(self):
      super().__init__()
      self.Conv2d_1a_3x3 = Conv(3, 32, 3, stride=2)
      self.Conv2d_2a_3x3 = Conv(32, 32, 3)
      self.Conv2d_2b_3x3 = Conv(32, 64, 3, padding=1)
      self.Conv2d_3b_1x1 = Conv(64, 80)
      self.Conv2d_4a_3x3 = Conv(80, 192, 3)
      self.Mixed_5b, self.Mixed_5c, self.Mixed_5d = A(192, 32), A(256, 64), A(288, 64)
      self.Mixed_6a = B(288)
      self.Mixed_6b, self.Mixed_6c = C(768, 128), C(768, 160)
      self.Mixed_6d, self.Mixed_6e = C(768, 160), C(768, 192)
      self.Mixed_7a, self.Mixed_7b, self.Mixed_7c = D(768), E(1280, False), E(2048, True)
      self.fc = nn.Linear(2048, 1008)

    def forward(self, x):
      x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
      x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(F.max_pool2d(x, 3, stride=2)))
      x = F.max_pool2d(x, 3, stride=2)
      for name in ("5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e", "7a", "7b", "7c"):
        x = getattr(self, "Mixed_" + name)(x)
      pool3 = F.adaptive_avg_pool2d(x, (1, 1)).flatten(1)
      return pool3, self.fc(pool3)

  return Net()


def test_torch_parity(tmp_path):
  torch = pytest.importorskip("torch")
  import torch.nn.functional as F  # pylint: disable=import-outside-toplevel
  torch.set_num_threads(2)
  torch.manual_seed(0)
  net = torch_fid_inception()
  images = torch.rand(2, 3, 299, 299) * 2 - 1
  # Non-trivial BatchNorm: random scale and bias, running stats measured on the images (so the
  # signal neither dies nor explodes through 94 layers) and then perturbed.
  bns = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
  with torch.no_grad():
    for bn in bns:
      bn.weight.uniform_(0.5, 1.5)
      bn.bias.uniform_(-0.3, 0.3)
      bn.momentum = 1.0
    net.train()(images)
    for bn in bns:
      c = bn.num_features
      bn.running_mean += 0.1 * torch.randn(c) * bn.running_var.sqrt()
      bn.running_var *= torch.empty(c).uniform_(0.7, 1.4)
    net.eval()
    start = time.perf_counter()
    ref_pool3, ref_logits = net(images)
    torch_s = time.perf_counter() - start
  path = str(tmp_path / "pt_inception.pth")
  torch.save(net.state_dict(), path)
  variables = inception.load_pytorch_fid_weights(path)
  start = time.perf_counter()
  pool3, logits = jax.jit(inception.FIDInceptionV3().apply)(
      variables, jnp.asarray(images.permute(0, 2, 3, 1).numpy()))
  pool3, logits = np.asarray(pool3), np.asarray(logits)
  jax_s = time.perf_counter() - start
  d_pool3 = np.abs(pool3 - ref_pool3.numpy()).max()
  d_logits = np.abs(logits - ref_logits.numpy()).max()
  print(f"FID Inception parity at 299 px: max |pool3 diff| {d_pool3:.2e} (|pool3| mean "
        f"{np.abs(pool3).mean():.3g}, max {np.abs(pool3).max():.3g}), max |logit diff| "
        f"{d_logits:.2e} (|logit| mean {np.abs(logits).mean():.3g}, max "
        f"{np.abs(logits).max():.3g}); torch {torch_s:.1f}s, jax incl. compile {jax_s:.1f}s")
  assert np.abs(pool3).max() > 0.1 and pool3.std() > 0.01       # the signal survived
  assert d_pool3 < 1e-3 and d_logits < 1e-3
  assert d_pool3 < 1e-5 * np.abs(pool3).max() and d_logits < 1e-5 * np.abs(logits).max()
  # The npz written from torch tensors loads identically.
  inception.save_state_dict_npz(net.state_dict(), str(tmp_path / "fid.npz"))
  again = inception.load_pytorch_fid_weights(str(tmp_path / "fid.npz"))
  for path_, value in traverse_util.flatten_dict(again).items():
    np.testing.assert_array_equal(value, traverse_util.flatten_dict(variables)[path_])

  for shape in ((2, 3, 32, 24), (2, 3, 512, 384), (1, 1, 299, 299), (1, 3, 300, 200)):
    x = torch.rand(*shape)
    ref = 2 * F.interpolate(x.expand(-1, 3, -1, -1), size=(299, 299), mode="bilinear",
                            align_corners=False) - 1
    got = inception.preprocess(x.permute(0, 2, 3, 1).numpy())
    np.testing.assert_allclose(np.asarray(got), ref.permute(0, 2, 3, 1).numpy(), atol=1e-6,
                               err_msg=str(shape))
