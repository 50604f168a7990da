"""Classifier models by `config.model.name`."""

from __future__ import annotations

from jaxsynth.errors import ConfigError
from jaxsynth.hardware import compute_dtype
from jaxsynth.models import resnet, swin, vit

RESNETS = {f"resnet{d}": d for d in resnet.STAGE_BLOCKS}
CLASSIFIERS = (*RESNETS, *swin.VARIANTS, *vit.VARIANTS)


def _bad(key: str, value, fix: str) -> ConfigError:
  return ConfigError(f"config key 'model.{key}' has bad value {value!r}: {fix}")


def _transformer_kwargs(model_cfg) -> dict:
  """Patch, window, drop-path and size overrides shared by Swin and ViT (0 / () = default)."""
  kwargs = {"dtype": compute_dtype(model_cfg.dtype)}
  for key in ("patch_size", "window_size"):
    if model_cfg.get(key, 0) < 0:
      raise _bad(key, model_cfg[key], "use 0 (chosen from the image size) or a positive size")
  if not 0 <= model_cfg.get("drop_path", 0.0) < 1:
    raise _bad("drop_path", model_cfg.drop_path, "use a rate in [0, 1)")
  kwargs["patch_size"] = int(model_cfg.get("patch_size", 0))
  kwargs["drop_path_rate"] = float(model_cfg.get("drop_path", 0.1))
  if model_cfg.get("embed_dim", 0):
    kwargs["embed_dim"] = int(model_cfg.embed_dim)
  return kwargs


def make_classifier(model_cfg, num_classes: int):
  """Builds the Flax classifier named by model.name for `num_classes` outputs."""
  name = model_cfg.name
  if name not in CLASSIFIERS:
    raise ConfigError(f"config key 'model.name' has unknown value {name!r}; "
                      f"use one of {', '.join(CLASSIFIERS)}")
  if name in swin.VARIANTS:
    kwargs = _transformer_kwargs(model_cfg)
    kwargs["window_size"] = int(model_cfg.get("window_size", 0))
    depths, heads = tuple(model_cfg.get("depths", ())), tuple(model_cfg.get("num_heads", ()))
    if depths:
      kwargs["depths"] = depths
    if heads:
      kwargs["num_heads"] = heads
    n_depths = len(kwargs.get("depths", swin.VARIANTS[name][1]))
    n_heads = len(kwargs.get("num_heads", swin.VARIANTS[name][2]))
    if n_depths != n_heads:
      raise _bad("num_heads", heads, f"give one head count per stage ({n_depths} stages)")
    return swin.swin(name, num_classes, **kwargs)
  if name in vit.VARIANTS:
    kwargs = _transformer_kwargs(model_cfg)
    depths, heads = tuple(model_cfg.get("depths", ())), tuple(model_cfg.get("num_heads", ()))
    if len(depths) > 1 or len(heads) > 1:
      raise _bad("depths", depths, "ViT takes one depth and one head count, e.g. (12,) and (6,)")
    if depths:
      kwargs["depth"] = int(depths[0])
    if heads:
      kwargs["num_heads"] = int(heads[0])
    return vit.vit(name, num_classes, **kwargs)
  if model_cfg.stem not in ("small", "imagenet"):
    raise _bad("stem", model_cfg.stem, "use small or imagenet")
  return resnet.resnet(RESNETS[name], num_classes, width=model_cfg.width,
                       stem=model_cfg.stem, dtype=compute_dtype(model_cfg.dtype))
