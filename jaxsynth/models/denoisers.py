"""Diffusion denoisers by `config.model.name`, their config keys, and FLOP/parameter counts.

Every denoiser is called as `model.apply(params, x_t, t, labels, train=False)` with x_t (B,H,W,C)
float, t (B,) int or float timesteps, labels (B,) int32 in [0, num_classes] where num_classes is
the learned null label of classifier-free guidance; it returns (B,H,W,C) float32 (2C with
`learn_sigma`). Dropout needs `rngs={'dropout': key}` when train=True.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxsynth import hardware
from jaxsynth.errors import ConfigError
from jaxsynth.models import dit, unet

DTYPES = hardware.DTYPE_CHOICES       # auto | float32 | bfloat16 (see jaxsynth/hardware.py)
CONV_IMPLS = ("auto", "xla", "im2col")


def denoiser_model_config() -> ml_collections.ConfigDict:
  """The `model` keys of a diffusion config, with defaults (a small ADM UNet for 32 px)."""
  model = ml_collections.ConfigDict()
  model.name = "unet"             # unet | dit
  model.dtype = "float32"         # compute dtype: float32 | bfloat16 | auto (params stay float32;
                                  # auto = bf16 on GPU/TPU and AVX512-BF16/AMX CPUs, else float32)
  model.learn_sigma = False       # True doubles the output channels (learned variance)
  model.conv_impl = "auto"        # auto | xla | im2col (see models/layers.py)

  model.unet = u = ml_collections.ConfigDict()
  u.channels = (64, 128, 128)     # channels per resolution level (base x channel multipliers)
  u.res_blocks = 2                # residual blocks per level on the way down (+1 on the way up)
  u.attn_resolutions = (16,)      # feature-map sizes in pixels that get self-attention
  u.head_dim = 8                  # channels per attention head; 0 uses num_heads
  u.num_heads = 0                 # heads per attention block when head_dim is 0
  u.norm_groups = 32              # GroupNorm groups
  u.time_embed_dim = 0            # width of the timestep/class embedding; 0 = 4 * channels[0]
  u.mid_attention = True          # self-attention in the middle block
  u.dropout = 0.1
  u.scale_shift_norm = True       # AdaGN injection (ADM); False adds the embedding (diffusers)
  u.zero_init = True              # zero-init the last conv of each block, attn proj and conv_out

  model.dit = d = ml_collections.ConfigDict()
  d.variant = "DiT-S/2"           # DiT-{S,B,L,XL}/{2,4,8}
  d.patch_size = 0                # the four below override the variant when > 0
  d.hidden_size = 0
  d.depth = 0
  d.num_heads = 0
  d.mlp_ratio = 4.0
  d.dropout = 0.0
  return model


def reference_unet_config() -> ml_collections.ConfigDict:
  """The issue-#4 benchmark reference: diffusers UNet2DModel(32 px, (64,128,128), attn at 16)."""
  model = denoiser_model_config()
  model.name = "unet"
  model.unet.update(channels=(64, 128, 128), res_blocks=2, attn_resolutions=(16,), head_dim=8,
                    num_heads=0, norm_groups=32, time_embed_dim=256, mid_attention=False,
                    dropout=0.0, scale_shift_norm=False, zero_init=False)
  return model


def _dtype(model_cfg) -> jnp.dtype:
  """The compute dtype named by model.dtype."""
  if model_cfg.dtype not in DTYPES:
    raise ConfigError(f"config key 'model.dtype' has bad value {model_cfg.dtype!r}; "
                      f"use one of {', '.join(DTYPES)}")
  if model_cfg.conv_impl not in CONV_IMPLS:
    raise ConfigError(f"config key 'model.conv_impl' has bad value {model_cfg.conv_impl!r}; "
                      f"use one of {', '.join(CONV_IMPLS)}")
  return hardware.compute_dtype(model_cfg.dtype)


def _make_unet(model_cfg, num_classes: int) -> unet.UNet:
  """Builds the UNet from model.unet.*."""
  u = model_cfg.unet
  channels = tuple(int(c) for c in u.channels)
  if not channels or min(channels) < 1:
    raise ConfigError(f"config key 'model.unet.channels' must be positive ints, got {u.channels}")
  bad = [c for c in channels if c % u.norm_groups]
  if u.norm_groups < 1 or bad:
    raise ConfigError(f"config key 'model.unet.norm_groups' ({u.norm_groups}) must divide every "
                      f"entry of model.unet.channels {channels}")
  if (u.head_dim > 0) == (u.num_heads > 0):
    raise ConfigError("set exactly one of 'model.unet.head_dim' and 'model.unet.num_heads' > 0 "
                      f"(got head_dim={u.head_dim}, num_heads={u.num_heads})")
  divisor = u.head_dim or u.num_heads
  if any(c % divisor for c in channels):
    raise ConfigError(f"attention heads do not split channels {channels}: head_dim={u.head_dim}, "
                      f"num_heads={u.num_heads}")
  if u.res_blocks < 1 or not 0.0 <= u.dropout < 1.0:
    raise ConfigError(f"need model.unet.res_blocks >= 1 and 0 <= dropout < 1, got "
                      f"{u.res_blocks}, {u.dropout}")
  return unet.UNet(num_classes=num_classes, channels=channels, res_blocks=int(u.res_blocks),
                   attn_resolutions=tuple(int(r) for r in u.attn_resolutions),
                   head_dim=int(u.head_dim), num_heads=int(u.num_heads),
                   norm_groups=int(u.norm_groups), time_embed_dim=int(u.time_embed_dim),
                   mid_attention=bool(u.mid_attention), dropout=float(u.dropout),
                   scale_shift_norm=bool(u.scale_shift_norm), zero_init=bool(u.zero_init),
                   learn_sigma=bool(model_cfg.learn_sigma), dtype=_dtype(model_cfg),
                   conv_impl=model_cfg.conv_impl)


def _make_dit(model_cfg, num_classes: int) -> dit.DiT:
  """Builds the DiT from model.dit.* (the variant, then any explicit sizes)."""
  d = model_cfg.dit
  try:
    kwargs = dit.dit_config(d.variant)
  except ValueError as e:
    raise ConfigError(f"config key 'model.dit.variant': {e}") from None
  for key in ("patch_size", "hidden_size", "depth", "num_heads"):
    if d[key] > 0:
      kwargs[key] = int(d[key])
  if kwargs["hidden_size"] % kwargs["num_heads"] or kwargs["hidden_size"] % 4:
    raise ConfigError(f"DiT hidden_size {kwargs['hidden_size']} must be divisible by 4 and by "
                      f"num_heads {kwargs['num_heads']}")
  return dit.DiT(num_classes=num_classes, mlp_ratio=float(d.mlp_ratio), dropout=float(d.dropout),
                 learn_sigma=bool(model_cfg.learn_sigma), dtype=_dtype(model_cfg),
                 conv_impl=model_cfg.conv_impl, **kwargs)


DENOISERS: dict[str, Callable[[Any, int], Any]] = {"unet": _make_unet, "dit": _make_dit}


def make_denoiser(model_cfg, num_classes: int):
  """Builds the denoiser named by model.name for `num_classes` classes (+ the null label)."""
  if model_cfg.name not in DENOISERS:
    raise ConfigError(f"config key 'model.name' has unknown value {model_cfg.name!r}; "
                      f"use one of {', '.join(DENOISERS)}")
  if num_classes < 1:
    raise ConfigError(f"a class-conditional denoiser needs num_classes >= 1, got {num_classes}")
  return DENOISERS[model_cfg.name](model_cfg, num_classes)


def check_image_shape(model_cfg, image_shape) -> None:
  """Raises ConfigError unless the denoiser named by `model_cfg` takes (H, W, C) images."""
  height, width = (int(d) for d in image_shape[:2])
  if model_cfg.name == "unet":
    channels = tuple(int(c) for c in model_cfg.unet.channels)
    factor = 2 ** (len(channels) - 1)
    if height % factor or width % factor:
      raise ConfigError(f"the UNet halves the image size {len(channels) - 1} time(s) "
                        f"(model.unet.channels={channels}), so {height}x{width} images do not "
                        f"fit: set data.image_size to a multiple of {factor}, or use fewer levels")
  elif model_cfg.name == "dit":
    patch = int(model_cfg.dit.patch_size) or dit.dit_config(model_cfg.dit.variant)["patch_size"]
    if height % patch or width % patch:
      raise ConfigError(f"the DiT patch size {patch} (model.dit) does not divide {height}x{width} "
                        f"images: set data.image_size to a multiple of {patch}, or "
                        "model.dit.patch_size")


def example_inputs(image_shape, batch: int = 1):
  """Abstract (x_t, t, labels) of a batch, for eval_shape / lowering without data."""
  return (jax.ShapeDtypeStruct((batch, *image_shape), jnp.float32),
          jax.ShapeDtypeStruct((batch,), jnp.int32), jax.ShapeDtypeStruct((batch,), jnp.int32))


def abstract_params(model, image_shape):
  """Parameter shapes of `model` for images of `image_shape` (H, W, C), without computing."""
  return jax.eval_shape(model.init, jax.random.PRNGKey(0), *example_inputs(image_shape))


def count_params(params) -> int:
  """Number of scalars in a parameter pytree (arrays or ShapeDtypeStructs)."""
  return int(sum(math.prod(x.shape) for x in jax.tree.leaves(params)))


def _eqn_flops(eqn) -> int:
  """2 x multiply-adds of one dot_general / conv_general_dilated equation, else 0."""
  if eqn.primitive.name == "dot_general":
    (lhs_contract, _), _ = eqn.params["dimension_numbers"]
    lhs = eqn.invars[0].aval.shape
    return 2 * math.prod(eqn.outvars[0].aval.shape) * math.prod(lhs[i] for i in lhs_contract)
  if eqn.primitive.name == "conv_general_dilated":
    rhs_spec = eqn.params["dimension_numbers"].rhs_spec   # (out feature, in feature, spatial...)
    rhs = eqn.invars[1].aval.shape
    taps = math.prod(rhs[i] for i in rhs_spec[2:]) * rhs[rhs_spec[1]]
    return 2 * math.prod(eqn.outvars[0].aval.shape) * taps
  return 0


def _jaxpr_flops(jaxpr) -> int:
  """Matmul and conv FLOPs of a jaxpr, recursing into sub-jaxprs (scan bodies times length)."""
  total = 0
  for eqn in jaxpr.eqns:
    total += _eqn_flops(eqn)
    repeat = eqn.params.get("length", 1) if eqn.primitive.name == "scan" else 1
    for value in eqn.params.values():
      for sub in value if isinstance(value, (tuple, list)) else (value,):
        if isinstance(sub, jax.extend.core.ClosedJaxpr):
          total += repeat * _jaxpr_flops(sub.jaxpr)
        elif isinstance(sub, jax.extend.core.Jaxpr):
          total += repeat * _jaxpr_flops(sub)
  return total


def matmul_flops(fn, *args) -> int:
  """Analytic FLOPs of fn(*args): 2 x multiply-adds of every matmul, einsum and convolution.

  Counted from the traced program (no compile), zero padding included, norms and activations
  excluded: the convention of fvcore/thop-style counts such as the issue's 3.16 GFLOP.
  """
  return _jaxpr_flops(jax.make_jaxpr(fn)(*args).jaxpr)


def forward_flops(model, image_shape, batch: int = 1) -> dict:
  """FLOPs of one forward at `batch`: analytic (`matmul_flops` of the float32 model, whatever
  the compute dtype) and XLA's cost analysis of the model as configured.

  XLA's figure comes from the lowered, unoptimised HLO (no compile). It counts elementwise ops
  too but skips the zero-padded taps of convolutions, so it reads a few percent below the
  analytic count on small feature maps.
  """
  params = abstract_params(model, image_shape)
  inputs = example_inputs(image_shape, batch)
  forward = lambda p, x, t, y: model.apply(p, x, t, y)
  # Counted on float32 XLA convolutions: the CPU bf16 path's dots also multiply padding rows
  # (layers.row_conv) and the parity upsample conv skips 5/9 of them; neither is the model's.
  canonical = model.clone(dtype=jnp.float32, conv_impl="xla")
  analytic = matmul_flops(lambda p, x, t, y: canonical.apply(p, x, t, y), params, *inputs)
  cost = jax.jit(forward).lower(params, *inputs).cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  xla = float(cost.get("flops", np.nan)) if cost else float("nan")
  return {"analytic": int(analytic), "xla": xla}
