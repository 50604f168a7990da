"""LPIPS: weights in the torchvision / lpips-package layouts convert and give the distance a
direct float64 NCHW computation gives; identical images are at distance 0."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from numpy.lib.stride_tricks import sliding_window_view

from jaxsynth.errors import CheckpointError
from jaxsynth.models import lpips
from jaxsynth.models.convert import save_safetensors


def _torch_layout(net, seed=0):
  """Random weights named and shaped as torchvision's backbone and the lpips lin layers."""
  rng = np.random.default_rng(seed)
  backbone, lin, channels = {}, {}, 3
  for index, out, k, _, _ in lpips.NETS[net]["convs"]:
    backbone[f"features.{index}.weight"] = rng.normal(
        0, np.sqrt(2.0 / (channels * k * k)), (out, channels, k, k)).astype(np.float32)
    backbone[f"features.{index}.bias"] = rng.normal(0, 0.01, out).astype(np.float32)
    channels = out
  taps = [out for index, out, *_ in lpips.NETS[net]["convs"] if index in lpips.NETS[net]["taps"]]
  for layer, c in enumerate(taps):
    lin[f"lin{layer}.model.1.weight"] = np.abs(rng.normal(0, 0.1, (1, c, 1, 1))).astype(np.float32)
  return backbone, lin


def _reference(backbone, lin, net, x, y):
  """LPIPS in float64 numpy, NCHW, straight from the definitions."""
  spec = lpips.NETS[net]

  def conv(a, w, b, stride, pad):
    a = np.pad(a, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    win = sliding_window_view(a, w.shape[2:], axis=(2, 3))[:, :, ::stride, ::stride]
    return np.einsum("bchwij,ocij->bohw", win, w, optimize=True) + b[None, :, None, None]

  def pool(a):
    k, s, _ = spec["pool"]
    return sliding_window_view(a, (k, k), axis=(2, 3))[:, :, ::s, ::s].max(axis=(-1, -2))

  def feats(a):
    a = (a.transpose(0, 3, 1, 2) - np.array(lpips.SHIFT)[None, :, None, None]) / \
        np.array(lpips.SCALE)[None, :, None, None]
    out = []
    for index, _, _, stride, pad in spec["convs"]:
      if index in spec["pool_before"]:
        a = pool(a)
      a = np.maximum(conv(a, backbone[f"features.{index}.weight"].astype(np.float64),
                          backbone[f"features.{index}.bias"], stride, pad), 0)
      if index in spec["taps"]:
        out.append(a / (np.sqrt((a ** 2).sum(axis=1, keepdims=True)) + 1e-10))
    return out

  total = 0.0
  for layer, (a, b) in enumerate(zip(feats(x.astype(np.float64)), feats(y.astype(np.float64)))):
    w = lin[f"lin{layer}.model.1.weight"].reshape(1, -1, 1, 1)
    total = total + (w * (a - b) ** 2).sum(axis=1).mean(axis=(1, 2))
  return total


@pytest.mark.parametrize("net, size", [("alex", 64), ("vgg", 16)])
def test_converted_lpips_matches_a_direct_computation(net, size, tmp_path):
  backbone, lin = _torch_layout(net)
  save_safetensors(str(tmp_path / "backbone.safetensors"), backbone)
  save_safetensors(str(tmp_path / "lin.safetensors"), lin)
  params = lpips.load_lpips(str(tmp_path / "backbone.safetensors"),
                            str(tmp_path / "lin.safetensors"), net)
  rng = np.random.default_rng(1)
  x = rng.uniform(-1, 1, (2, size, size, 3)).astype(np.float32)
  y = np.clip(x + rng.normal(0, 0.3, x.shape), -1, 1).astype(np.float32)
  distance = jax.jit(lambda a, b: lpips.LPIPS(net).apply({"params": params}, a, b))
  got = np.asarray(distance(x, y))
  np.testing.assert_allclose(got, _reference(backbone, lin, net, x, y), rtol=2e-3)
  far = np.clip(x + rng.normal(0, 0.8, x.shape), -1, 1).astype(np.float32)
  same_and_far = np.asarray(distance(np.concatenate([x, x]), np.concatenate([x, far])))
  np.testing.assert_allclose(same_and_far[:2], 0.0, atol=1e-6)
  assert np.all(same_and_far[2:] > got)
  if net == "alex":   # differentiable: usable as a perceptual loss
    g = jax.jit(jax.grad(lambda a: jnp.sum(distance(a, jnp.asarray(x)))))(jnp.asarray(y))
    assert np.all(np.isfinite(np.asarray(g))) and np.abs(np.asarray(g)).sum() > 0


def test_missing_or_misshapen_weights_are_clear_errors(tmp_path):
  backbone, lin = _torch_layout("alex")
  del lin["lin2.model.1.weight"]
  with pytest.raises(CheckpointError, match="lack lin2.model.1.weight"):
    lpips.lpips_params(backbone, lin, "alex")
  backbone, lin = _torch_layout("alex")
  lin["lin0.model.1.weight"] = np.ones((1, 32, 1, 1), np.float32)
  save_safetensors(str(tmp_path / "b.safetensors"), backbone)
  save_safetensors(str(tmp_path / "l.safetensors"), lin)
  with pytest.raises(CheckpointError, match=r"lin_0 is \(32,\), not \(64,\)"):
    lpips.load_lpips(str(tmp_path / "b.safetensors"), str(tmp_path / "l.safetensors"), "alex")
  with pytest.raises(CheckpointError, match="unknown LPIPS backbone 'squeeze'"):
    lpips.lpips_params(backbone, lin, "squeeze")
