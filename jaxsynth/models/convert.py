"""Import timm checkpoints (safetensors, or torch state dicts when torch is installed) into Flax.

    state_dict = load_timm_state_dict("swin_tiny_patch4_window7_224.safetensors")
    variables, report = swin_from_timm(state_dict, model.init(key, x))

Every leaf of the Flax template is looked up under its timm name, re-laid out (conv OIHW ->
HWIO, linear (out, in) -> (in, out), BatchNorm weight/bias/running_mean/running_var ->
params scale/bias and batch_stats mean/var) and shape-checked; unmatched or mis-shaped keys
are one `CheckpointError` listing them all. Adaptations, each listed in the report:
  - the head is kept from the template (re-initialised) when its shape differs (num_classes);
  - an RGB first conv is summed over its input channels for 1-channel models (timm's rule);
  - a patch-embedding kernel of another size is resampled by FlexiViT's pseudo-inverse;
  - Swin relative position tables of a smaller window are centre-cropped (exact: the same
    offsets keep the same bias), of a larger window resized bicubically;
  - ViT position embeddings of another grid are resized bicubically.
Both Swin layouts are read: timm >= 0.9 (`layers.{i}.downsample` opens stage i, `head.fc`) and
the original/older one (`layers.{i}.downsample` closes stage i, `head`). `*_to_timm` write the
current layout, e.g. to export weights or build test fixtures.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import tempfile
from typing import Callable

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from flax import traverse_util

from jaxsynth.errors import CheckpointError
from jaxsynth.models import resnet

log = logging.getLogger(__name__)

SAFETENSORS_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8,
    "BOOL": np.bool_,
}
# Buffers timm keeps in state dicts that the Flax models recompute or do not need.
IGNORED_KEYS = re.compile(r"(num_batches_tracked|relative_position_index|attn_mask)$")
TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")
WRAPPER_KEYS = ("state_dict_ema", "model_ema", "state_dict", "model")


# ----------------------------------------------------------------------------- file formats


def load_safetensors(path: str) -> dict[str, np.ndarray]:
  """Reads a .safetensors file with numpy: u64 header length, JSON header, raw LE buffers."""
  try:
    with open(path, "rb") as f:
      data = f.read()
  except OSError as e:
    raise CheckpointError(f"cannot read pretrained weights {path!r}: {e}") from None
  if len(data) < 8:
    raise CheckpointError(f"{path!r} is not a safetensors file (shorter than its 8-byte header)")
  n = int.from_bytes(data[:8], "little")
  if n > len(data) - 8:
    raise CheckpointError(f"{path!r} is not a safetensors file (header length {n} exceeds the "
                          f"file size {len(data)})")
  try:
    header = json.loads(data[8:8 + n])
  except ValueError as e:
    raise CheckpointError(f"{path!r}: safetensors header is not valid JSON ({e})") from None
  header.pop("__metadata__", None)
  buffer = memoryview(data)[8 + n:]
  out = {}
  for name, info in header.items():
    dtype = SAFETENSORS_DTYPES.get(info.get("dtype"))
    if dtype is None:
      raise CheckpointError(f"{path!r}: tensor {name!r} has unsupported dtype "
                            f"{info.get('dtype')!r}")
    begin, end = info["data_offsets"]
    shape = tuple(info["shape"])
    if not 0 <= begin <= end <= len(buffer) or end - begin != np.dtype(dtype).itemsize * int(
        np.prod(shape)):
      raise CheckpointError(f"{path!r}: tensor {name!r} has offsets {begin}..{end} that do not "
                            f"match its shape {shape} or the file size; the file is corrupt")
    out[name] = np.frombuffer(buffer[begin:end], dtype=dtype).reshape(shape)
  return out


def save_safetensors(path: str, tensors: dict[str, np.ndarray],
                     metadata: dict[str, str] | None = None) -> None:
  """Writes tensors as .safetensors (readable by the safetensors package), atomically."""
  names = {np.dtype(v): k for k, v in SAFETENSORS_DTYPES.items()}
  header, chunks, offset = {}, [], 0
  for name in sorted(tensors):
    array = np.ascontiguousarray(tensors[name])
    if array.dtype not in names:
      raise ValueError(f"tensor {name!r} has dtype {array.dtype} that safetensors cannot store")
    raw = array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()
    header[name] = {"dtype": names[array.dtype], "shape": list(array.shape),
                    "data_offsets": [offset, offset + len(raw)]}
    chunks.append(raw)
    offset += len(raw)
  if metadata:
    header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
  text = json.dumps(header, separators=(",", ":")).encode()
  text += b" " * (-len(text) % 8)                    # the reference writer aligns to 8 bytes
  directory = os.path.dirname(os.path.abspath(path))
  fd, tmp = tempfile.mkstemp(dir=directory, suffix=".tmp")
  try:
    with os.fdopen(fd, "wb") as f:
      f.write(len(text).to_bytes(8, "little"))
      f.write(text)
      for chunk in chunks:
        f.write(chunk)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


TO_SAFETENSORS = ("convert it to safetensors where torch is available: python -c \"import torch, "
                  "safetensors.torch as st; sd = torch.load('IN.pth', map_location='cpu', "
                  "weights_only=True); st.save_file({k: v.contiguous() for k, v in sd.items()}, "
                  "'OUT.safetensors')\"")


def load_torch_state_dict(path: str, without_torch: str = TO_SAFETENSORS) -> dict:
  """A torch checkpoint's state dict (unwrapped from `state_dict`/`model`/...) as numpy arrays;
  `without_torch` is the advice when torch is not installed."""
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError:
    raise CheckpointError(f"{path!r} is a torch checkpoint but torch is not installed; "
                          f"{without_torch}") from None
  try:
    state = torch.load(path, map_location="cpu", weights_only=True)
  except Exception as e:  # noqa: BLE001  (torch raises many types for bad files)
    raise CheckpointError(f"cannot load torch checkpoint {path!r}: {e}") from None
  for key in WRAPPER_KEYS:
    if isinstance(state, dict) and isinstance(state.get(key), dict):
      state = state[key]
      break
  if not isinstance(state, dict):
    raise CheckpointError(f"{path!r} holds a {type(state).__name__}, not a state dict")
  return {k: (v.float() if v.is_floating_point() else v).numpy()
          for k, v in state.items() if hasattr(v, "numpy")}


def check_pretrained_file(path: str) -> None:
  """Raises CheckpointError unless `path` is a readable weights file with a known suffix."""
  if not os.path.isfile(path):
    what = "are not a file" if os.path.lexists(path) else "do not exist"
    raise CheckpointError(f"pretrained weights {path!r} {what}; set model.pretrained to a "
                          ".safetensors or .pth file")
  if not path.endswith((".safetensors",) + TORCH_SUFFIXES):
    raise CheckpointError(f"pretrained weights {path!r} have an unknown suffix; use .safetensors "
                          f"or one of {', '.join(TORCH_SUFFIXES)}")
  if not os.access(path, os.R_OK):
    raise CheckpointError(f"pretrained weights {path!r} cannot be read (permission denied): fix "
                          "their permissions (e.g. chmod a+r)")


def load_timm_state_dict(path: str) -> dict[str, np.ndarray]:
  """Reads a timm state dict (.safetensors, or .pth/.pt/.bin/.ckpt with torch) as numpy arrays."""
  check_pretrained_file(path)
  if path.endswith(".safetensors"):
    state = load_safetensors(path)
  else:
    state = load_torch_state_dict(path)
  # DataParallel / DDP checkpoints prefix every key with "module.".
  if state and all(k.startswith("module.") for k in state):
    state = {k[len("module."):]: v for k, v in state.items()}
  return {k: np.asarray(v, np.float32) if v.dtype in (np.float16, ml_dtypes.bfloat16) else v
          for k, v in state.items()}


# ----------------------------------------------------------------------------- adaptations


def resample_patch_kernel(kernel: np.ndarray, new_hw: tuple[int, int]) -> np.ndarray:
  """FlexiViT's PI-resize of an HWIO patch kernel: keeps <x, w> for x resized bilinearly."""
  old_hw = kernel.shape[:2]
  eye = np.eye(old_hw[0] * old_hw[1], dtype=np.float32).reshape(-1, *old_hw)
  resize = np.stack([np.asarray(jax.image.resize(jnp.asarray(e), new_hw, "bilinear",
                                                 antialias=False)).reshape(-1) for e in eye], 1)
  pinv = np.linalg.pinv(resize.T)                       # (new_pixels, old_pixels)
  flat = kernel.reshape(old_hw[0] * old_hw[1], -1)
  return (pinv @ flat).reshape(*new_hw, *kernel.shape[2:]).astype(kernel.dtype)


def resize_relative_bias_table(table: np.ndarray, new_rows: int) -> np.ndarray:
  """((2W-1)^2, heads) -> ((2w-1)^2, heads): centre crop when smaller, bicubic when larger."""
  side, heads = int(round(np.sqrt(table.shape[0]))), table.shape[1]
  new_side = int(round(np.sqrt(new_rows)))
  grid = table.reshape(side, side, heads)
  if new_side <= side:
    start = (side - new_side) // 2
    grid = grid[start:start + new_side, start:start + new_side]
  else:
    grid = np.asarray(jax.image.resize(jnp.asarray(grid), (new_side, new_side, heads), "bicubic"))
  return grid.reshape(new_side * new_side, heads)


def resize_pos_embed(pos: np.ndarray, new_tokens: int) -> np.ndarray:
  """ViT (1, 1 + g*g, D) position embedding resized bicubically to (1, new_tokens, D)."""
  cls, grid = pos[:, :1], pos[:, 1:]
  side, new_side = int(round(np.sqrt(grid.shape[1]))), int(round(np.sqrt(new_tokens - 1)))
  grid = grid.reshape(side, side, -1)
  grid = np.asarray(jax.image.resize(jnp.asarray(grid), (new_side, new_side, grid.shape[-1]),
                                     "bicubic"))
  return np.concatenate([cls, grid.reshape(1, new_side * new_side, -1)], axis=1)


# ----------------------------------------------------------------------------- the mapping


@dataclasses.dataclass
class ConversionReport:
  """What `*_from_timm` did: loaded leaves, head kept from init, adaptations, skipped buffers."""
  loaded: list[str] = dataclasses.field(default_factory=list)
  reinitialised: list[str] = dataclasses.field(default_factory=list)
  adapted: list[str] = dataclasses.field(default_factory=list)
  ignored: list[str] = dataclasses.field(default_factory=list)

  def summary(self) -> str:
    """One line for logs."""
    parts = [f"loaded {len(self.loaded)} tensors"]
    if self.reinitialised:
      parts.append(f"re-initialised {', '.join(self.reinitialised)}")
    if self.adapted:
      parts.append(f"adapted {'; '.join(self.adapted)}")
    return ", ".join(parts)


def _to_flax(value: np.ndarray, ndim: int, leaf: str) -> np.ndarray:
  """timm layout -> Flax layout for a leaf of `ndim` dims."""
  if leaf == "kernel" and ndim == 4:
    return value.transpose(2, 3, 1, 0)                  # OIHW -> HWIO
  if leaf == "kernel" and ndim == 2:
    return value.T                                      # (out, in) -> (in, out)
  return value


def _to_timm(value: np.ndarray, leaf: str) -> np.ndarray:
  if leaf == "kernel" and value.ndim == 4:
    return value.transpose(3, 2, 0, 1)
  if leaf == "kernel" and value.ndim == 2:
    return value.T
  return value


def _adapt(path: str, value: np.ndarray, shape: tuple, report: ConversionReport):
  """A checkpoint array of the wrong shape made to fit, or None when no rule applies."""
  if value.ndim == 4 and value.shape[3] == shape[3]:
    if value.shape[2] != shape[2]:
      if shape[2] != 1:
        return None
      report.adapted.append(f"{path}: summed {value.shape[2]}-channel input to 1 channel")
      value = value.sum(axis=2, keepdims=True)
    if value.shape[:2] != shape[:2] and "patch_embed" in path:
      report.adapted.append(f"{path}: patch {value.shape[:2]} resampled to {shape[:2]}")
      value = resample_patch_kernel(value, shape[:2])
    return value if value.shape == shape else None
  if path.endswith("relative_position_bias_table") and value.shape[1] == shape[1]:
    report.adapted.append(f"{path}: table {value.shape[0]} -> {shape[0]} rows")
    return resize_relative_bias_table(value, shape[0])
  if path.endswith("pos_embed") and value.shape[2] == shape[2]:
    report.adapted.append(f"{path}: {value.shape[1]} -> {shape[1]} tokens")
    return resize_pos_embed(value, shape[1])
  return None


def _convert(state_dict: dict, template, key_of: Callable[[tuple], str], arch: str,
             head: str = "head"):
  """Fills every leaf of `template` from `state_dict` through `key_of`; see the module doc."""
  flat = traverse_util.flatten_dict(jax.tree.map(np.asarray, dict(template)))
  report, out, used = ConversionReport(), {}, set()
  missing, mismatched = [], []
  for path, leaf in flat.items():
    name, key = "/".join(path), key_of(path)
    if key not in state_dict:
      if path[1] == head:
        out[path] = leaf
        if head not in report.reinitialised:
          report.reinitialised.append(head)
        continue
      missing.append(f"{name} (timm key {key!r})")
      continue
    used.add(key)
    value = _to_flax(np.asarray(state_dict[key]), leaf.ndim, path[-1])
    if value.shape != leaf.shape:
      if path[1] == head:
        out[path] = leaf
        if head not in report.reinitialised:
          report.reinitialised.append(head)
        continue
      adapted = _adapt(name, value, leaf.shape, report)
      if adapted is None:
        mismatched.append(f"{name}: checkpoint {value.shape} vs model {leaf.shape} "
                          f"(timm key {key!r})")
        continue
      value = adapted
    out[path] = jnp.asarray(value, leaf.dtype)
    report.loaded.append(name)
  unexpected = []
  for key in sorted(set(state_dict) - used):
    (report.ignored if IGNORED_KEYS.search(key) or key.startswith(f"{head}.")
     else unexpected).append(key)
  if missing or mismatched or unexpected:
    lines = [f"the checkpoint does not match this {arch} (check model.name, model.width, "
             "model.stem, model.embed_dim, model.depths, data.channels):"]
    for title, items in (("missing from the checkpoint", missing),
                         ("shape mismatch", mismatched),
                         ("checkpoint keys the model does not use", unexpected)):
      if items:
        shown = items[:20] + ([f"... and {len(items) - 20} more"] if len(items) > 20 else [])
        lines.append(f"  {title} ({len(items)}): " + "; ".join(shown))
    raise CheckpointError("\n".join(lines))
  if report.reinitialised:
    log.info("pretrained weights: %s kept from init (its shape or presence differs)",
             ", ".join(report.reinitialised))
  variables = traverse_util.unflatten_dict({k: jnp.asarray(v) for k, v in out.items()})
  return variables, report


# ResNet ---------------------------------------------------------------------------------


def _resnet_layout(template) -> tuple[list[tuple[int, int]], int]:
  """(stage, index) of each Flax block in order, and the main convs per block (2 or 3)."""
  names = [k for k in template["params"] if k.startswith(("BasicBlock_", "Bottleneck_"))]
  bottleneck = names and names[0].startswith("Bottleneck")
  for depth, blocks in resnet.STAGE_BLOCKS.items():
    if sum(blocks) == len(names) and (depth >= 50) == bool(bottleneck):
      return [(s, j) for s, n in enumerate(blocks) for j in range(n)], 3 if bottleneck else 2
  raise CheckpointError(f"the Flax template has {len(names)} ResNet blocks, no known depth")


def _resnet_key_fn(template) -> Callable[[tuple], str]:
  layout, main = _resnet_layout(template)

  def key_of(path):
    collection, *names, leaf = path
    if names[0] == "head":
      return f"fc.{'weight' if leaf == 'kernel' else 'bias'}"
    if names[0].startswith(("BasicBlock_", "Bottleneck_")):
      stage, j = layout[int(names[0].split("_")[1])]
      prefix, (kind, idx) = f"layer{stage + 1}.{j}.", names[1].split("_")
      idx = int(idx)
      module = (f"{'conv' if kind == 'Conv' else 'bn'}{idx + 1}" if idx < main
                else f"downsample.{0 if kind == 'Conv' else 1}")
    else:
      prefix, module = "", "conv1" if names[0] == "Conv_0" else "bn1"
    suffix = {"kernel": "weight", "scale": "weight", "bias": "bias", "mean": "running_mean",
              "var": "running_var"}[leaf]
    return f"{prefix}{module}.{suffix}"

  return key_of


def resnet_from_timm(state_dict: dict, template) -> tuple[dict, ConversionReport]:
  """timm/torchvision ResNet state dict -> Flax params + batch_stats shaped like `template`."""
  return _convert(state_dict, template, _resnet_key_fn(template), "ResNet")


def resnet_to_timm(variables) -> dict[str, np.ndarray]:
  """Flax ResNet variables -> a timm-layout state dict (with num_batches_tracked buffers)."""
  key_of = _resnet_key_fn(variables)
  out = {}
  for path, leaf in traverse_util.flatten_dict(dict(variables)).items():
    key = key_of(path)
    out[key] = _to_timm(np.asarray(leaf, np.float32), path[-1])
    if key.endswith("running_mean"):
      out[key.replace("running_mean", "num_batches_tracked")] = np.zeros((), np.int64)
  return out


# Swin -----------------------------------------------------------------------------------

_LEAF = {"kernel": "weight", "scale": "weight"}


def _swin_key_fn(old_layout: bool, head_key: str) -> Callable[[tuple], str]:
  def key_of(path):
    _, *names, leaf = path
    if names[0] == "head":
      return f"{head_key}.{_LEAF.get(leaf, leaf)}"
    parts = []
    for i, n in enumerate(names):
      match = re.fullmatch(r"(layers|blocks)_(\d+)", n)
      if match and match.group(1) == "layers" and old_layout and names[i + 1] == "downsample":
        parts.append(f"layers.{int(match.group(2)) - 1}")
      else:
        parts.append(f"{match.group(1)}.{match.group(2)}" if match else n)
    leaf = leaf if leaf == "relative_position_bias_table" else _LEAF.get(leaf, leaf)
    return ".".join(parts + [leaf])

  return key_of


def swin_from_timm(state_dict: dict, template) -> tuple[dict, ConversionReport]:
  """timm (or original Microsoft) Swin state dict -> Flax variables shaped like `template`."""
  old_layout = any(k.startswith("layers.0.downsample.") for k in state_dict)
  head_key = "head.fc" if "head.fc.weight" in state_dict or "head.weight" not in state_dict \
      else "head"
  return _convert(state_dict, template, _swin_key_fn(old_layout, head_key), "Swin")


def swin_to_timm(variables) -> dict[str, np.ndarray]:
  """Flax Swin variables -> a timm >= 0.9 layout state dict."""
  key_of = _swin_key_fn(False, "head.fc")
  return {key_of(p): _to_timm(np.asarray(v, np.float32), p[-1])
          for p, v in traverse_util.flatten_dict(dict(variables)).items()}


# ViT ------------------------------------------------------------------------------------


def _vit_key(path) -> str:
  _, *names, leaf = path
  if not names:                                         # cls_token, pos_embed
    return leaf
  names = ["patch_embed.proj" if n == "patch_embed_proj" else
           re.sub(r"^blocks_(\d+)$", r"blocks.\1", n) for n in names]
  if len(names) == 2 and names[1] in ("qkv", "proj"):
    names.insert(1, "attn")
  return ".".join(names + [_LEAF.get(leaf, leaf)])


def vit_from_timm(state_dict: dict, template) -> tuple[dict, ConversionReport]:
  """timm ViT state dict (class-token models) -> Flax variables shaped like `template`."""
  return _convert(state_dict, template, _vit_key, "ViT")


def vit_to_timm(variables) -> dict[str, np.ndarray]:
  """Flax ViT variables -> a timm layout state dict."""
  return {_vit_key(p): _to_timm(np.asarray(v, np.float32), p[-1])
          for p, v in traverse_util.flatten_dict(dict(variables)).items()}


# ----------------------------------------------------------------------------- entry point


def converter_for(name: str) -> Callable:
  """The `*_from_timm` function for a model.name."""
  if name.startswith("resnet"):
    return resnet_from_timm
  if name.startswith("swin_"):
    return swin_from_timm
  if name.startswith("vit_"):
    return vit_from_timm
  raise CheckpointError(f"no timm weight import for model.name={name!r}")


def apply_pretrained(model_cfg, variables):
  """Replaces freshly initialised `variables` by model.pretrained's weights (no-op when "")."""
  path = model_cfg.get("pretrained", "")
  if not path:
    return variables
  state_dict = load_timm_state_dict(path)
  new, report = converter_for(model_cfg.name)(state_dict, variables)
  log.info("pretrained weights from %s: %s", path, report.summary())
  return new
