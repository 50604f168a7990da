"""The FID Inception-v3 (pytorch-fid's `fid_inception_v3`) in Flax, its preprocessing and weights.

    variables = load_pytorch_fid_weights("pt_inception-2015-12-05-6726825d.pth")
    pool3, logits = FIDInceptionV3().apply(variables, preprocess(images_uint8))

pool3 (N, 2048) are the FID/KID features, logits (N, 1008) the Inception Score's. The network is
torchvision's Inception3 (aux_logits=False, 1008 classes) with Mixed_5b..7c replaced by
pytorch-fid's TF-compatible blocks: every 3x3 stride-1 average pool ignores padded taps
(count_include_pad=False) and Mixed_7c pools its last branch with a max. Module and parameter
names are the state dict's (`Mixed_5b.branch1x1.conv.weight` -> params/Mixed_5b/branch1x1/conv/
kernel), so the converter only re-lays tensors out. Weights are read from the .pth (needs torch),
or, without torch, from a .npz (`save_state_dict_npz`) or .safetensors of the same keys.
"""

from __future__ import annotations

import functools
import io
import os
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from jaxsynth.errors import CheckpointError
from jaxsynth.files import atomic_write
from jaxsynth.models.convert import load_safetensors, load_torch_state_dict

INPUT_SIZE = 299
MIN_INPUT_SIZE = 75           # the smallest input whose Mixed_7a output is still 1x1
NUM_CLASSES = 1008            # the TF graph's 1001 ImageNet classes padded to 1008
FEATURES = 2048
BN_EPSILON = 1e-3
IGNORED_SUFFIXES = ("num_batches_tracked",)
# Flax leaf name -> state-dict suffix, per collection.
_PARAM_NAMES = {"kernel": "weight", "scale": "weight", "bias": "bias"}
_STAT_NAMES = {"mean": "running_mean", "var": "running_var"}


# ----------------------------------------------------------------------------- pooling


def avg_pool_3x3(x: jax.Array, count_include_pad: bool = False) -> jax.Array:
  """3x3 stride-1 average pool with 1 px zero padding (PyTorch's `count_include_pad` meaning)."""
  return nn.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)),
                     count_include_pad=count_include_pad)


def max_pool_3x3(x: jax.Array, strides: int = 2) -> jax.Array:
  """3x3 max pool: stride 2 unpadded (floor mode), or stride 1 padded by 1 with -inf."""
  padding = "VALID" if strides == 2 else ((1, 1), (1, 1))
  return nn.max_pool(x, (3, 3), strides=(strides, strides), padding=padding)


# ----------------------------------------------------------------------------- network


class BasicConv2d(nn.Module):
  """Conv (no bias) + BatchNorm(eps=1e-3, running statistics) + ReLU, as torchvision's."""
  features: int
  kernel_size: Sequence[int] = (1, 1)
  strides: int = 1
  padding: Sequence[int] = (0, 0)      # symmetric (height, width) padding, as Conv2d's
  precision: Any = jax.lax.Precision.HIGHEST

  @nn.compact
  def __call__(self, x):
    ph, pw = self.padding
    x = nn.Conv(self.features, tuple(self.kernel_size), self.strides,
                padding=((ph, ph), (pw, pw)), use_bias=False, precision=self.precision,
                name="conv")(x)
    x = nn.BatchNorm(use_running_average=True, epsilon=BN_EPSILON, name="bn")(x)
    return nn.relu(x)


class InceptionA(nn.Module):
  """Mixed_5b/5c/5d (FIDInceptionA): 1x1, 5x5, double 3x3 and avg-pool branches."""
  pool_features: int
  precision: Any = jax.lax.Precision.HIGHEST

  @nn.compact
  def __call__(self, x):
    conv = functools.partial(BasicConv2d, precision=self.precision)
    b1 = conv(64, name="branch1x1")(x)
    b5 = conv(48, name="branch5x5_1")(x)
    b5 = conv(64, (5, 5), padding=(2, 2), name="branch5x5_2")(b5)
    b3 = conv(64, name="branch3x3dbl_1")(x)
    b3 = conv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(b3)
    b3 = conv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_3")(b3)
    bp = conv(self.pool_features, name="branch_pool")(avg_pool_3x3(x, count_include_pad=False))
    return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
  """Mixed_6a (torchvision's InceptionB): stride-2 reduction 35 -> 17."""
  precision: Any = jax.lax.Precision.HIGHEST

  @nn.compact
  def __call__(self, x):
    conv = functools.partial(BasicConv2d, precision=self.precision)
    b3 = conv(384, (3, 3), strides=2, name="branch3x3")(x)
    bd = conv(64, name="branch3x3dbl_1")(x)
    bd = conv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(bd)
    bd = conv(96, (3, 3), strides=2, name="branch3x3dbl_3")(bd)
    return jnp.concatenate([b3, bd, max_pool_3x3(x)], axis=-1)


class InceptionC(nn.Module):
  """Mixed_6b..6e (FIDInceptionC): factorised 7x7 branches and an avg-pool branch."""
  channels_7x7: int
  precision: Any = jax.lax.Precision.HIGHEST

  @nn.compact
  def __call__(self, x):
    conv = functools.partial(BasicConv2d, precision=self.precision)
    c7 = self.channels_7x7
    b1 = conv(192, name="branch1x1")(x)
    b7 = conv(c7, name="branch7x7_1")(x)
    b7 = conv(c7, (1, 7), padding=(0, 3), name="branch7x7_2")(b7)
    b7 = conv(192, (7, 1), padding=(3, 0), name="branch7x7_3")(b7)
    bd = conv(c7, name="branch7x7dbl_1")(x)
    bd = conv(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_2")(bd)
    bd = conv(c7, (1, 7), padding=(0, 3), name="branch7x7dbl_3")(bd)
    bd = conv(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_4")(bd)
    bd = conv(192, (1, 7), padding=(0, 3), name="branch7x7dbl_5")(bd)
    bp = conv(192, name="branch_pool")(avg_pool_3x3(x, count_include_pad=False))
    return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):
  """Mixed_7a (torchvision's InceptionD): stride-2 reduction 17 -> 8."""
  precision: Any = jax.lax.Precision.HIGHEST

  @nn.compact
  def __call__(self, x):
    conv = functools.partial(BasicConv2d, precision=self.precision)
    b3 = conv(192, name="branch3x3_1")(x)
    b3 = conv(320, (3, 3), strides=2, name="branch3x3_2")(b3)
    b7 = conv(192, name="branch7x7x3_1")(x)
    b7 = conv(192, (1, 7), padding=(0, 3), name="branch7x7x3_2")(b7)
    b7 = conv(192, (7, 1), padding=(3, 0), name="branch7x7x3_3")(b7)
    b7 = conv(192, (3, 3), strides=2, name="branch7x7x3_4")(b7)
    return jnp.concatenate([b3, b7, max_pool_3x3(x)], axis=-1)


class InceptionE(nn.Module):
  """Mixed_7b (FIDInceptionE_1, avg pool) / Mixed_7c (FIDInceptionE_2, 3x3 stride-1 max pool)."""
  pool: str = "avg"                    # avg | max
  precision: Any = jax.lax.Precision.HIGHEST

  @nn.compact
  def __call__(self, x):
    conv = functools.partial(BasicConv2d, precision=self.precision)
    b1 = conv(320, name="branch1x1")(x)
    b3 = conv(384, name="branch3x3_1")(x)
    b3 = jnp.concatenate([conv(384, (1, 3), padding=(0, 1), name="branch3x3_2a")(b3),
                          conv(384, (3, 1), padding=(1, 0), name="branch3x3_2b")(b3)], axis=-1)
    bd = conv(448, name="branch3x3dbl_1")(x)
    bd = conv(384, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(bd)
    bd = jnp.concatenate([conv(384, (1, 3), padding=(0, 1), name="branch3x3dbl_3a")(bd),
                          conv(384, (3, 1), padding=(1, 0), name="branch3x3dbl_3b")(bd)], axis=-1)
    pooled = max_pool_3x3(x, strides=1) if self.pool == "max" else avg_pool_3x3(x, False)
    bp = conv(192, name="branch_pool")(pooled)
    return jnp.concatenate([b1, b3, bd, bp], axis=-1)


class FIDInceptionV3(nn.Module):
  """pytorch-fid's FID Inception-v3, inference only: NHWC in [-1, 1] -> (pool3, logits).

  Input is float (N, H, W, 3) in [-1, 1], normally 299x299 (`preprocess` resizes; this module
  does not), at least 75 px. Returns float32 pool3 features (N, 2048), the global average of
  Mixed_7c (what FID/KID use), and logits (N, 1008) = fc(pool3), the checkpoint's 1008-way fc
  with its bias. The original TF Inception Score, torch-fidelity and torchmetrics softmax all
  1008 logits but without the bias (`unbiased_logits`); use that to reproduce their IS numbers.
  BatchNorm always uses running stats. `precision` defaults to HIGHEST so that GPUs do not
  silently run the convolutions in TF32.
  """
  precision: Any = jax.lax.Precision.HIGHEST

  @nn.compact
  def __call__(self, x):
    if x.ndim != 4 or x.shape[-1] != 3 or min(x.shape[1:3]) < MIN_INPUT_SIZE:
      raise ValueError(f"FIDInceptionV3 expects (N, H, W, 3) images with H, W >= "
                       f"{MIN_INPUT_SIZE} (normally {INPUT_SIZE}); got shape {x.shape}")
    conv = functools.partial(BasicConv2d, precision=self.precision)
    x = x.astype(jnp.float32)
    x = conv(32, (3, 3), strides=2, name="Conv2d_1a_3x3")(x)
    x = conv(32, (3, 3), name="Conv2d_2a_3x3")(x)
    x = conv(64, (3, 3), padding=(1, 1), name="Conv2d_2b_3x3")(x)
    x = max_pool_3x3(x)
    x = conv(80, name="Conv2d_3b_1x1")(x)
    x = conv(192, (3, 3), name="Conv2d_4a_3x3")(x)
    x = max_pool_3x3(x)
    for name, pool_features in (("Mixed_5b", 32), ("Mixed_5c", 64), ("Mixed_5d", 64)):
      x = InceptionA(pool_features, self.precision, name=name)(x)
    x = InceptionB(self.precision, name="Mixed_6a")(x)
    for name, c7 in (("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160), ("Mixed_6e", 192)):
      x = InceptionC(c7, self.precision, name=name)(x)
    x = InceptionD(self.precision, name="Mixed_7a")(x)
    x = InceptionE("avg", self.precision, name="Mixed_7b")(x)
    x = InceptionE("max", self.precision, name="Mixed_7c")(x)
    pool3 = jnp.mean(x, axis=(1, 2))
    logits = nn.Dense(NUM_CLASSES, precision=self.precision, name="fc")(pool3)
    return pool3, logits


def unbiased_logits(variables: dict, pool3: jax.Array) -> jax.Array:
  """pool3 @ fc kernel, without the bias: the logits the TF and torch-fidelity IS use."""
  kernel = variables["params"]["fc"]["kernel"]
  return jnp.matmul(pool3, kernel, precision=jax.lax.Precision.HIGHEST)


# ----------------------------------------------------------------------------- preprocessing


def _linear_taps(in_size: int, out_size: int):
  """PyTorch's bilinear (align_corners=False) source indices and weights along one axis."""
  scale = np.float64(np.float32(in_size) / np.float32(out_size))
  # scale * (dst + 0.5) - 0.5 rounded once to float32: PyTorch's CPU kernel fuses it (FMA).
  src = (scale * (np.arange(out_size) + 0.5) - 0.5).astype(np.float32)
  src = np.maximum(src, np.float32(0))                  # PyTorch clamps negative sources to 0
  i0 = np.minimum(src.astype(np.int64), in_size - 1)
  i1 = np.minimum(i0 + 1, in_size - 1)
  w1 = (src - i0).astype(np.float32)
  return i0, i1, np.float32(1) - w1, w1


def resize_bilinear(x: jax.Array, size: Sequence[int]) -> jax.Array:
  """NHWC bilinear resize equal to F.interpolate(mode='bilinear', align_corners=False), no AA."""
  x = jnp.asarray(x, jnp.float32)
  for axis, out_size in ((2, size[1]), (1, size[0])):   # width first, as PyTorch's kernel
    i0, i1, w0, w1 = _linear_taps(x.shape[axis], out_size)
    shape = [1] * x.ndim
    shape[axis] = out_size
    x = (jnp.take(x, i0, axis=axis) * w0.reshape(shape)
         + jnp.take(x, i1, axis=axis) * w1.reshape(shape))
  return x


def preprocess(images: jax.Array, size: int = INPUT_SIZE) -> jax.Array:
  """pytorch-fid's input pipeline: uint8 or [0, 1] NHWC -> bilinear 299x299 -> [-1, 1] float32.

  uint8 is divided by 255 (torchvision's ToTensor); floats must already be in [0, 1]. Grayscale
  is repeated to RGB. The resize is PyTorch's (no antialiasing when downscaling, unlike
  jax.image.resize), applied even at 299 px, where it is the identity.
  """
  images = jnp.asarray(images)
  if images.ndim != 4 or images.shape[-1] not in (1, 3):
    raise ValueError(f"preprocess expects (N, H, W, 1|3) images; got shape {images.shape}")
  x = images.astype(jnp.float32)
  if images.dtype == jnp.uint8:
    x = x / 255.0
  if x.shape[-1] == 1:
    x = jnp.repeat(x, 3, axis=-1)
  return 2.0 * resize_bilinear(x, (size, size)) - 1.0


# ----------------------------------------------------------------------------- weights


def state_dict_key(collection: str, path: Sequence[str]) -> str:
  """The pytorch-fid state-dict key of a Flax leaf, e.g. ('Mixed_5b', 'branch1x1', 'bn', 'var')."""
  names = _STAT_NAMES if collection == "batch_stats" else _PARAM_NAMES
  return ".".join([*path[:-1], names[path[-1]]])


def _to_flax(value: np.ndarray) -> np.ndarray:
  """Conv OIHW -> HWIO, linear (out, in) -> (in, out); vectors as they are."""
  return value.transpose(2, 3, 1, 0) if value.ndim == 4 else value.T


def fid_inception_template() -> dict:
  """The variables' shapes ({'params', 'batch_stats'} of ShapeDtypeStructs), without computing."""
  x = jax.ShapeDtypeStruct((1, MIN_INPUT_SIZE, MIN_INPUT_SIZE, 3), jnp.float32)
  return jax.eval_shape(FIDInceptionV3().init, jax.random.PRNGKey(0), x)


def variables_from_state_dict(state_dict: dict, source: str = "<state dict>") -> dict:
  """pytorch-fid state dict (key -> array) -> Flax {'params', 'batch_stats'}, strictly checked."""
  state = {k: v for k, v in state_dict.items() if not k.endswith(IGNORED_SUFFIXES)}
  out, missing, mismatched, used = {}, [], [], set()
  for collection, tree in fid_inception_template().items():
    for path, leaf in traverse_util.flatten_dict(tree).items():
      key = state_dict_key(collection, path)
      if key not in state:
        missing.append(key)
        continue
      used.add(key)
      value = _to_flax(np.asarray(state[key], np.float32))
      if value.shape != leaf.shape:
        s = leaf.shape                                  # back to OIHW / (out, in) for the message
        needs = (s[3], s[2], s[0], s[1]) if len(s) == 4 else s[::-1]
        mismatched.append(f"{key} {tuple(np.shape(state[key]))} (needs {tuple(needs)})")
        continue
      out[(collection, *path)] = jnp.asarray(value)
  unexpected = sorted(set(state) - used)
  if missing or mismatched or unexpected:
    parts = [f"{len(missing)} missing: {', '.join(missing)}" if missing else "",
             f"{len(mismatched)} mis-shaped: {', '.join(mismatched)}" if mismatched else "",
             f"{len(unexpected)} unexpected: {', '.join(unexpected)}" if unexpected else ""]
    raise CheckpointError(f"{source!r} is not a pytorch-fid Inception-v3 state dict "
                          f"(pt_inception-2015-12-05-6726825d.pth): "
                          + "; ".join(p for p in parts if p))
  return traverse_util.unflatten_dict(out)


def load_state_dict(path: str) -> dict[str, np.ndarray]:
  """Reads a state dict as numpy arrays from .npz, .safetensors, or a torch file (.pth etc.)."""
  if not os.path.isfile(path):
    what = "are not a file" if os.path.lexists(path) else "do not exist"
    raise CheckpointError(f"FID Inception weights {path!r} {what}; pass the path of "
                          "pt_inception-2015-12-05-6726825d.pth (or its .npz/.safetensors)")
  if path.endswith(".npz"):
    try:
      with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}
    except (OSError, ValueError) as e:
      raise CheckpointError(f"cannot read {path!r} as .npz: {e}") from None
  if path.endswith(".safetensors"):
    return load_safetensors(path)
  return load_torch_state_dict(
      path, "pip install torch (the CPU wheel is enough), or convert it once where torch is "
      "available with jaxsynth.models.inception.save_state_dict_npz(torch.load(...), 'OUT.npz') "
      "(or to .safetensors) and pass that file instead")


def load_pytorch_fid_weights(path: str) -> dict:
  """pytorch-fid weights (.pth, or .npz/.safetensors of its keys) -> FIDInceptionV3 variables."""
  return variables_from_state_dict(load_state_dict(path), source=path)


def save_state_dict_npz(state_dict: dict, path: str) -> None:
  """Saves a state dict (torch tensors or arrays) as .npz, so loading needs no torch; atomic."""
  arrays = {}
  for key, value in state_dict.items():
    if key.endswith(IGNORED_SUFFIXES):
      continue
    if hasattr(value, "detach"):
      value = value.detach().cpu().float().numpy() if value.is_floating_point() else (
          value.detach().cpu().numpy())
    arrays[key] = np.asarray(value)
  buffer = io.BytesIO()
  np.savez(buffer, **arrays)
  atomic_write(path, buffer.getvalue())
