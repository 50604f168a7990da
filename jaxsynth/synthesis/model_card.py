"""The model card of a trained generator (`model_card.json` + `model_card.md` in its run
directory), as MONAI bundles and diffusers pipelines carry one: what it generates (classes,
groups, conditioning), what it was trained on (data source, per-class and per-group counts), how
(config, steps, final losses), with which software, and a sample grid.
"""

from __future__ import annotations

import hashlib
import os
import platform

import numpy as np

from jaxsynth import files
from jaxsynth.data.base import ImageSource, group_ids
from jaxsynth.data.conditions import Conditioning
from jaxsynth.training import workdir as workdir_lib

JSON_FILE = "model_card.json"
MARKDOWN_FILE = "model_card.md"
#: Files up to this size get a sha256 in the card (larger ones are named only).
HASH_LIMIT = 1 << 30
INTENDED_USE = ("Research: synthetic training images for imbalanced medical image classification "
                "and its study. Not a medical device; not for diagnosis.")


def versions() -> dict:
  """The versions of Python and of the packages the generator ran with."""
  import flax  # pylint: disable=import-outside-toplevel
  import jax  # pylint: disable=import-outside-toplevel
  import optax  # pylint: disable=import-outside-toplevel
  import jaxsynth  # pylint: disable=import-outside-toplevel
  return {"python": platform.python_version(), "jaxsynth": jaxsynth.__version__,
          "jax": jax.__version__, "flax": flax.__version__, "optax": optax.__version__,
          "numpy": np.__version__}


def _sha256(path: str) -> str | None:
  if not os.path.isfile(path) or os.path.getsize(path) > HASH_LIMIT:
    return None
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()


def train_counts(train: ImageSource, conditioning: Conditioning) -> dict:
  """Training samples per class, per group (when the data has groups) and per condition id;
  `train` is labelled with condition ids (tasks/diffusion.py's Setup.train)."""
  classes, groups = conditioning.split(train.labels)
  if groups is None:
    groups = group_ids(train)
  class_names = list(conditioning.class_names) or [str(c)
                                                   for c in range(conditioning.num_classes)]
  out = {"total": len(train)}
  if conditioning.mode != "group":
    counts = np.bincount(classes, minlength=len(class_names))
    out["per_class"] = {class_names[c]: int(n) for c, n in enumerate(counts)}
  if groups is not None:
    n_groups = max(conditioning.num_groups, int(groups.max()) + 1 if groups.size else 0)
    names = list(conditioning.group_names) or [str(g) for g in range(n_groups)]
    names += [str(g) for g in range(len(names), n_groups)]
    counts = np.bincount(groups, minlength=n_groups)
    out["per_group"] = {names[g]: int(n) for g, n in enumerate(counts)}
  if conditioning.mode == "class_group":
    counts = np.bincount(train.labels, minlength=conditioning.num_conditions)
    out["per_condition"] = {name: int(n) for name, n in zip(conditioning.names(), counts)}
  return out


def build(config, train: ImageSource, conditioning: Conditioning, image_shape, results: dict,
          grid: str | None) -> dict:
  """The card's content: classes, counts, data, training, sampling defaults, versions, grid."""
  data = config.data.to_dict()
  path = str(data.get("path") or "")
  d = config.diffusion
  return {
      "kind": "class-conditional diffusion model" if conditioning.mode == "class"
              else f"diffusion model conditioned on {conditioning.mode}",
      "intended_use": INTENDED_USE,
      "condition": conditioning.mode,
      "classes": list(conditioning.class_names),
      "groups": list(conditioning.group_names) if conditioning.uses_groups else [],
      "condition_ids": conditioning.names(),
      "image_shape": [int(s) for s in image_shape],
      "train_counts": train_counts(train, conditioning),
      "data": {"source": data.get("source"), "path": os.path.abspath(path) if path else "",
               "sha256": _sha256(path) if path else None, "name": train.name,
               "config": data},
      "model": {"denoiser": config.model.get("name", ""), "config": config.model.to_dict()},
      "diffusion": {"schedule": d.schedule, "num_timesteps": int(d.num_timesteps),
                    "prediction": d.prediction, "label_dropout": d.get("label_dropout"),
                    "default_cfg_scale": d.get("cfg_scale")},
      "training": {"steps": results.get("steps"), "seed": int(config.seed),
                   "train_loss": (results.get("train") or {}).get("loss"),
                   "val": results.get("val"), "checkpoint": results.get("checkpoint")},
      "config_file": workdir_lib.CONFIG_FILE,
      "sample_grid": grid,
      "versions": versions(),
      "limitations": ("Trained on the counts above: classes and groups with few training images "
                      "are generated least faithfully; judge samples per class (FID/KID, "
                      "filters) before training on them."),
  }


def markdown(card: dict) -> str:
  """model_card.md: the card as a page."""
  counts = card["train_counts"]
  lines = [f"# Model card: {card['kind']}", "", card["intended_use"], "",
           f"- condition: `{card['condition']}` over {len(card['condition_ids'])} ids",
           f"- image shape: {'x'.join(str(s) for s in card['image_shape'])}",
           f"- data: {card['data']['source']} {card['data']['path'] or card['data']['name']}"
           + (f" (sha256 {card['data']['sha256'][:16]}…)" if card["data"]["sha256"] else ""),
           f"- trained {card['training']['steps']} steps, seed {card['training']['seed']}; "
           f"config in `{card['config_file']}`",
           "- versions: " + ", ".join(f"{k} {v}" for k, v in card["versions"].items()), "",
           f"## Training images ({counts['total']})", ""]
  for key, title in (("per_class", "class"), ("per_group", "group"),
                     ("per_condition", "class/group")):
    if key in counts:
      lines += [f"| {title} | images |", "|---|---|"]
      lines += [f"| {name} | {n} |" for name, n in counts[key].items()] + [""]
  if card["sample_grid"]:
    lines += ["## Samples (a row per condition id: "
              + ", ".join(card["condition_ids"]) + ")", "",
              f"![samples]({card['sample_grid']})", ""]
  lines += ["## Limitations", "", card["limitations"], ""]
  return "\n".join(lines)


def write(workdir: str, card: dict) -> None:
  """Writes model_card.json and model_card.md into the run directory `workdir`."""
  workdir_lib.write_json(os.path.join(workdir, JSON_FILE), card)
  files.atomic_write(os.path.join(workdir, MARKDOWN_FILE), markdown(card).encode())
