"""LPIPS (Zhang et al. 2018, eq. 1), the learned perceptual distance VQGAN and LDM autoencoders
train with, in Flax, from the public weights the user supplies by path (nothing is downloaded):

  d(x, y) = sum_l mean_hw || w_l * (f_l(x) / ||f_l(x)|| - f_l(y) / ||f_l(y)||) ||^2

f_l are the ReLU outputs of five stages of an ImageNet backbone (VGG16: relu1_2, relu2_2,
relu3_3, relu4_3, relu5_3; AlexNet: relu1..relu5), each unit-normalised over channels; w_l are
the non-negative 1x1 "lin" weights of the `lpips` package (v0.1). Inputs are RGB in [-1, 1],
shifted and scaled as the package's ScalingLayer does.

Weights: the backbone is torchvision's state dict (`features.N.weight/bias`: vgg16 or alexnet,
.pth with torch or .safetensors), the lin layers the package's `weights/v0.1/{vgg,alex}.pth`
(`linK.model.1.weight`). `load_lpips` converts both (OIHW -> HWIO, (1, C, 1, 1) -> (C,)).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from jaxsynth.errors import CheckpointError
from jaxsynth.models.convert import load_timm_state_dict

SHIFT = (-0.030, -0.088, -0.188)
MIN_SIZE = {"vgg": 16, "alex": 31}   # the smallest image side every stage still sees
SCALE = (0.458, 0.448, 0.450)

#: Backbone -> (torchvision feature index, out channels, kernel, stride, padding) of every conv,
#: the max-pools (as indices they follow), and the conv indices whose ReLU is an LPIPS tap.
NETS = {
    "vgg": dict(
        convs=[(0, 64, 3, 1, 1), (2, 64, 3, 1, 1), (5, 128, 3, 1, 1), (7, 128, 3, 1, 1),
               (10, 256, 3, 1, 1), (12, 256, 3, 1, 1), (14, 256, 3, 1, 1),
               (17, 512, 3, 1, 1), (19, 512, 3, 1, 1), (21, 512, 3, 1, 1),
               (24, 512, 3, 1, 1), (26, 512, 3, 1, 1), (28, 512, 3, 1, 1)],
        pool_before=(5, 10, 17, 24), pool=(2, 2, 0), taps=(2, 7, 14, 21, 28)),
    "alex": dict(
        convs=[(0, 64, 11, 4, 2), (3, 192, 5, 1, 2), (6, 384, 3, 1, 1), (8, 256, 3, 1, 1),
               (10, 256, 3, 1, 1)],
        pool_before=(3, 6), pool=(3, 2, 0), taps=(0, 3, 6, 8, 10)),
}


class LPIPS(nn.Module):
  """apply({"params": load_lpips(...)}, x, y) -> (B,) distances of RGB images in [-1, 1]."""
  net: str = "vgg"

  def features(self, x):
    spec = NETS[self.net]
    k, s, p = spec["pool"]
    taps = []
    for index, features, kernel, stride, pad in spec["convs"]:
      if index in spec["pool_before"]:
        x = nn.max_pool(x, (k, k), (s, s), padding=((p, p), (p, p)))
      x = nn.relu(nn.Conv(features, (kernel, kernel), (stride, stride),
                          padding=((pad, pad), (pad, pad)), name=f"features_{index}")(x))
      if index in spec["taps"]:
        taps.append(x)
    return taps

  @nn.compact
  def __call__(self, x, y):
    shift, scale = jnp.asarray(SHIFT), jnp.asarray(SCALE)
    both = jnp.concatenate([x, y]).astype(jnp.float32)     # one pass through the backbone
    taps = self.features((both - shift) / scale)
    total = 0.0
    for layer, (a, b) in enumerate(jnp.split(t, 2) for t in taps):
      a = a / (jnp.sqrt(jnp.sum(a * a, axis=-1, keepdims=True)) + 1e-10)
      b = b / (jnp.sqrt(jnp.sum(b * b, axis=-1, keepdims=True)) + 1e-10)
      w = self.param(f"lin_{layer}", nn.initializers.ones, (a.shape[-1],))
      total = total + jnp.mean(jnp.sum(w * (a - b) ** 2, axis=-1), axis=(1, 2))
    return total


def lpips_params(backbone: dict, lin: dict, net: str = "vgg") -> dict:
  """Flax params of `LPIPS(net)` from torchvision's backbone and the lpips lin state dicts."""
  if net not in NETS:
    raise CheckpointError(f"unknown LPIPS backbone {net!r}; use one of {', '.join(NETS)}")
  params, missing = {}, []
  for index, *_ in NETS[net]["convs"]:
    w, b = backbone.get(f"features.{index}.weight"), backbone.get(f"features.{index}.bias")
    if w is None or b is None:
      missing.append(f"features.{index}.weight/bias")
      continue
    params[f"features_{index}"] = {"kernel": np.transpose(np.asarray(w, np.float32),
                                                          (2, 3, 1, 0)),
                                   "bias": np.asarray(b, np.float32)}
  for layer in range(len(NETS[net]["taps"])):
    w = lin.get(f"lin{layer}.model.1.weight", lin.get(f"lin{layer}.model.0.weight"))
    if w is None:
      missing.append(f"lin{layer}.model.1.weight")
      continue
    params[f"lin_{layer}"] = np.asarray(w, np.float32).reshape(-1)
  if missing:
    raise CheckpointError(f"the LPIPS {net} weights lack {', '.join(missing)}: give torchvision's "
                          f"{'vgg16' if net == 'vgg' else 'alexnet'} state dict and the lpips "
                          f"package's weights/v0.1/{net}.pth")
  return params


def load_lpips(backbone_path: str, lin_path: str, net: str = "vgg") -> dict:
  """Reads both weight files (.safetensors, or torch files when torch is installed), converts
  them, and checks every shape against the module; the params."""
  params = lpips_params(load_timm_state_dict(backbone_path), load_timm_state_dict(lin_path), net)
  x = jnp.zeros((1, 64, 64, 3))
  expected = traverse_util.flatten_dict(
      jax.eval_shape(LPIPS(net).init, jax.random.PRNGKey(0), x, x)["params"])
  flat = traverse_util.flatten_dict(params)
  bad = [f"{'/'.join(k)} is {np.shape(flat[k])}, not {v.shape}" for k, v in expected.items()
         if np.shape(flat[k]) != v.shape]
  if bad:
    raise CheckpointError(f"LPIPS weights {backbone_path} / {lin_path} do not fit the {net} "
                          f"backbone ({'; '.join(bad[:3])}): check the net and the files")
  return params
