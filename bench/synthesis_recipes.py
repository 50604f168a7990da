"""Does synthetic data help on real medical data? The resumable study of issue #13.

Every cell (data set, row, seed) is one `python -m jaxsynth.main` run under runs/ (checkpoints,
samples, logs: never committed) whose small result is written into the repository as
docs/results/synthesis_recipes/cells/<set>/<row>/seed<k>.json (metrics, command, wall time,
machine, the generator it used). A cell whose JSON exists is skipped, so a later session on a
fresh machine continues the study from the committed cells; then the document
docs/results/synthesis_recipes.md is regenerated from the cells alone.

  python bench/synthesis_recipes.py --sets breastmnist --deadline 3000 --commit
  python bench/synthesis_recipes.py --dry-run                 # print every cell's command
  python bench/synthesis_recipes.py --aggregate-only          # rebuild the document only

Rows (ROWS): the generators (one train_diffusion run per set and kind, shared by every recipe
and seed of that set: `recipe.generator_workdir`), ce and the best classic recipe of
docs/results/classic_recipes.md (configs/recipes.py), and the synthesis recipes
(configs/synthesis.py). The ce cell of a seed is the baseline of that seed's augment and DiffuPT
cells (`recipe.baseline_workdir`) and the judge of their classifier filter; the IOIS online cells
take the offline cell's baseline (IOIS evaluates the last epoch, not the best checkpoint).
A cell needs the *run directories* of the cells it builds on; when one is missing (a fresh
machine) that cell's command is run again first (same config and seed, same result) and its
committed JSON is kept.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import datetime
import hashlib
import importlib.metadata
import json
import math
import os
import shlex
import subprocess
import sys
import threading
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench import machine  # noqa: E402  (after the path)
from bench.classic_recipes import (  # noqa: E402  (one implementation, shared with it)
    BINARY_METRICS, COMMON_METRICS, DECOUPLED, cell as fmt_mean_std, dataset_info, fmt_num,
    mean_std, nan_to_none, run_process, write_atomic)

CELLS = os.path.join("docs", "results", "synthesis_recipes", "cells")
DOC = os.path.join("docs", "results", "synthesis_recipes.md")
NOTES = os.path.join("docs", "results", "synthesis_recipes_notes.md")
FIGURES = os.path.join("docs", "results", "synthesis_recipes")
#: The exit status of a run that refused its input with a one-line error (jaxsynth.main).
USER_ERROR_RC = 2
#: One-line errors that say the run's own files are broken (a damaged or unreadable shard or
#: checkpoint, a missing file, a write that did not fit), not that it refused its input: such
#: a cell failed and runs again; it is never recorded as a result.
BROKEN_RUN_ERRORS = ("is damaged", "cannot be read", "does not exist", "cannot write")
#: The metrics of the paired comparisons (besides the two rarest classes' accuracy).
PAIRED_METRICS = ("macro_f1", "balanced_accuracy", "mcc", "auc")


@dataclasses.dataclass(frozen=True)
class DataSet:
  """One real set of the study and the budget it runs under on the 2-core CPU machine."""
  image_size: int
  epochs: float              # classifier epochs (MedMNIST protocol: lr x0.1 at 50% and 75%)
  generator_steps: int       # train_diffusion steps of batch 64
  attention: int             # the UNet's self-attention resolution (its lowest level)
  iois_budget: int           # IOIS K, synthetic images per epoch
  pretrain_size: int = 1000  # DiffuPT's synthetic pretraining set
  fill_to: int = 0           # augment: top every class up to this (0 = the largest class)
  group_target: int = 0      # equal_scale: N_target per group (0 = the largest group)
  file: str = ""             # ../shared/data/<file>.npz; "" = the set's name


SETS = {
    "breastmnist": DataSet(28, 50, 3000, 7, 32),
    "retinamnist": DataSet(28, 50, 3000, 7, 64),
    "pneumoniamnist": DataSet(28, 15, 3000, 7, 64),
    # 412 train smear images of 2-139 cells (mean 36): equal_scale brings each to 36 cells
    "chula_rbc11": DataSet(32, 8, 3000, 8, 128, fill_to=1000, group_target=36),
    "ham10000": DataSet(32, 10, 3000, 8, 128, file="ham10000_64"),
}

#: The best classic recipe per set by its minority-class metric in
#: docs/results/classic_recipes.md (two-class: harmonic mean of sensitivity and specificity;
#: more classes: mean accuracy of the two rarest classes). HAM10000 is not in that table: crt,
#: the winner on the other long-tailed multi-class set (Chula RBC-11), stands in for it.
BEST_CLASSIC = {
    "breastmnist": "weighted_ce_sampler",   # harmonic mean 0.812
    "retinamnist": "weighted_ce_sampler",   # rarest two 0.283 / 0.601
    "pneumoniamnist": "bce",                # harmonic mean 0.835
    "chula_rbc11": "crt",                   # rarest two 0.418 / 0.682
    "ham10000": "crt",
}

# The shared generator: a small class-conditional UNet sized for two CPU cores.
GENERATOR_MODEL = ("--config.model.unet.channels=(32,64,64)", "--config.model.unet.res_blocks=1",
                   "--config.model.unet.head_dim=32", "--config.model.unet.norm_groups=8")
#: A DiT of about the UNet's cost per image: patch 4 (49 tokens at 28 px), 6 blocks of width 256.
DIT_MODEL = ("--config.model.name=dit", "--config.model.dit.variant=DiT-S/4",
             "--config.model.dit.depth=6", "--config.model.dit.hidden_size=256",
             "--config.model.dit.num_heads=4")
GENERATOR_TRAIN = ("--config.train.batch_size=64", "--config.train.learning_rate=0.0003",
                   "--config.train.eval_every=500", "--config.train.checkpoint_every=500",
                   "--config.train.sample_every=1000", "--config.train.log_every=50")
#: How every sweep of the study draws (sample.* keys do not enter a reused generator's identity).
SAMPLE = ("--config.generator.sample.sampler=ddim", "--config.generator.sample.num_steps=25",
          "--config.generator.sample.cfg_scale=2.0", "--config.generator.sample.dtype=auto",
          "--config.generator.sample.batch_size=64")
#: DiffuPT's rates (pretrain 1e-4, fine-tune 1e-5) are for large pretrained networks and 37k
#: images. Under this budget (about 250 fine-tune steps from scratch) they under-fit: BreastMNIST
#: seed 0's fine-tune ended at train accuracy 0.77 (CE: 1.00). The study pretrains at CE's rate and
#: fine-tunes at a tenth of it, the usual transfer ratio (configs/default.py's values).
DIFFUPT_LRS = ("--config.recipe.pretrain_lr=0.001", "--config.recipe.finetune_lr=0.0001")
#: The LDM rows' first stage (issue #14): a KL autoencoder of factor 2 (28 px <-> 14x14x4; factor
#: 4 would give 7x7 latents, too small for a 2-level UNet).
AUTOENCODER_MODEL = ("--config.model.channels=(32,64)", "--config.model.res_blocks=1",
                     "--config.model.norm_groups=8", "--config.model.latent_channels=4")
AUTOENCODER_TRAIN = ("--config.train.batch_size=32", "--config.train.steps=2000",
                     "--config.train.eval_every=500", "--config.train.checkpoint_every=500",
                     "--config.train.sample_every=1000", "--config.train.log_every=50")
#: The LDM's denoiser: the pixel generator's lower two levels (64 channels at 14 and 7 px,
#: attention at 7), on the 14x14 latents; val_batches as the recipes' generator keys have it.
LDM_MODEL = ("--config.model.unet.channels=(64,64)", "--config.model.unet.res_blocks=1",
             "--config.model.unet.head_dim=32", "--config.model.unet.norm_groups=8",
             "--config.diffusion.val_batches=4")
#: The BAGAN-GP rows' generator (issue #15), bench/gan_study.py's 28 px size: encoder widths
#: 32/64 (7x7 maps), batch 64, 100 epochs of rounds after a 30-epoch supervised autoencoder.
GAN_MODEL = ("--config.model.channels=(32,64)",)
GAN_TRAIN = ("--config.train.batch_size=64", "--config.train.epochs=100",
             "--config.gan.autoencoder_epochs=30", "--config.train.checkpoint_every=100",
             "--config.train.sample_every=500", "--config.train.log_every=20")
GANS = ("bagan_gp",)


@dataclasses.dataclass(frozen=True)
class Row:
  """One row of the study: how its cells run and which cells' run directories they need."""
  kind: str                  # autoencoder | generator | classic | synthesis
  variant: str = ""          # configs/<...>.py variant
  extra: tuple = ()          # more --config overrides
  needs: tuple = ()          # rows whose same-seed (or generator) run directories it reads
  generator: str = ""        # the generator row it samples from
  sets: tuple = ()           # the sets it runs on; () = every set but ham10000
  seeds: tuple = ()          # () = --seeds; generators: (0,)


MAIN_SETS = ("breastmnist", "retinamnist", "pneumoniamnist", "chula_rbc11")
ALL_SETS = MAIN_SETS + ("ham10000",)
RATIOS = ("30-70", "40-60", "60-40", "70-30")
ROWS = {
    "generator_unet": Row("generator", "unet", sets=ALL_SETS, seeds=(0,)),
    "generator_dit": Row("generator", "dit", sets=("breastmnist",), seeds=(0,)),
    # latent diffusion (issue #14): the autoencoder, then the LDM on its latents
    "autoencoder_kl": Row("autoencoder", "kl", sets=("breastmnist",), seeds=(0,)),
    "generator_ldm": Row("generator", "ldm", needs=("autoencoder_kl",), sets=("breastmnist",),
                         seeds=(0,)),
    "generator_cells": Row("generator", "unet", ("--config.diffusion.condition=class_group",),
                           sets=("chula_rbc11",), seeds=(0,)),
    "ce": Row("classic", "ce", sets=ALL_SETS),
    "best_classic": Row("classic", "", sets=ALL_SETS),
    "augment": Row("synthesis", "augment", needs=("ce",), generator="generator_unet"),
    "augment_filter": Row("synthesis", "augment", needs=("ce",), generator="generator_unet",
                          extra=("--config.generator.sample.filter.name=classifier",)),
    "augment_dit": Row("synthesis", "augment", needs=("ce",), generator="generator_dit",
                       sets=("breastmnist",)),
    "pretrain_finetune": Row("synthesis", "diffupt", ("--config.recipe.filter=none",),
                             needs=("ce",), generator="generator_unet"),
    "diffupt_classifier": Row("synthesis", "diffupt", ("--config.recipe.filter=classifier",),
                              needs=("ce",), generator="generator_unet", sets=ALL_SETS),
    "diffupt_class_realism": Row("synthesis", "diffupt",
                                 ("--config.recipe.filter=class_realism",), needs=("ce",),
                                 generator="generator_unet"),
    **{f"diffupt_ratio_{r}": Row("synthesis", "diffupt", ("--config.recipe.filter=classifier",
                                                          f"--config.recipe.ratio={r}"),
                                 needs=("ce",), generator="generator_unet",
                                 sets=("breastmnist",)) for r in RATIOS},
    "iois_offline": Row("synthesis", "offline", generator="generator_unet", sets=ALL_SETS),
    "iois_ois": Row("synthesis", "online", ("--config.recipe.aas=false",),
                    needs=("iois_offline",), generator="generator_unet", sets=ALL_SETS),
    "iois_ois_aas": Row("synthesis", "online", ("--config.recipe.aas=true",),
                        needs=("iois_offline",), generator="generator_unet", sets=ALL_SETS),
    "augment_ldm": Row("synthesis", "augment_ldm", needs=("ce",), generator="generator_ldm",
                       sets=("breastmnist",)),
    "diffupt_ldm_classifier": Row("synthesis", "diffupt_ldm",
                                  ("--config.recipe.filter=classifier",), needs=("ce",),
                                  generator="generator_ldm", sets=("breastmnist",)),
    "equal_scale": Row("synthesis", "equal_scale", needs=("ce",), generator="generator_cells",
                       sets=("chula_rbc11",)),
    # GAN generators (issue #15): BAGAN-GP, then its augment and pretrain -> fine-tune rows
    "generator_bagan_gp": Row("generator", "bagan_gp", sets=("breastmnist", "retinamnist"),
                              seeds=(0,)),
    "augment_bagan_gp": Row("synthesis", "augment_gan", needs=("ce",),
                            generator="generator_bagan_gp", sets=("breastmnist", "retinamnist")),
    "pretrain_finetune_bagan_gp": Row("synthesis", "diffupt_gan", ("--config.recipe.filter=none",),
                                      needs=("ce",), generator="generator_bagan_gp",
                                      sets=("breastmnist", "retinamnist")),
}


#: The budget cut of the study's third session (docs/results/synthesis_recipes_notes.md): these
#: ablation rows run seed 0 only outside BreastMNIST, so the remaining sets fit the CPU budget.
ONE_SEED_OUTSIDE_BREAST = ("iois_ois", "pretrain_finetune", "diffupt_class_realism")


def log(msg: str) -> None:
  print(f"[synthesis_recipes] {msg}", file=sys.stderr, flush=True)


def row_sets(name: str) -> tuple:
  return ROWS[name].sets or MAIN_SETS


def row_seeds(name: str, seeds, dataset: str = "breastmnist") -> tuple:
  """The seeds row `name` runs on `dataset` (of --seeds unless the row fixes them)."""
  out = ROWS[name].seeds or tuple(seeds)
  if name in ONE_SEED_OUTSIDE_BREAST and dataset != "breastmnist":
    out = tuple(s for s in out if s == 0)
  return out


def cell_path(cells: str, dataset: str, row: str, seed: int) -> str:
  """The committed result of one cell: CELLS/<set>/<row>/seed<k>.json."""
  return os.path.join(cells, dataset, row, f"seed{seed}.json")


def run_dir(runs: str, dataset: str, row: str, seed: int) -> str:
  """The cell's jaxsynth --workdir (never committed)."""
  return os.path.join(runs, dataset, row, f"seed{seed}")


def finished_run(runs: str, dataset: str, row: str, seed: int) -> bool:
  return os.path.isfile(os.path.join(run_dir(runs, dataset, row, seed), "metrics.json"))


def data_overrides(args, dataset: str) -> list[str]:
  spec = SETS[dataset]
  path = os.path.join(args.data_dir, (spec.file or dataset) + ".npz")
  return ["--config.data.source=npz", f"--config.data.path={path}",
          f"--config.data.image_size={spec.image_size}", "--config.data.imbalance_ratio=0.0"]


def classifier_overrides(args, dataset: str, prefix: str = "") -> list[str]:
  """The classifier schedule of every row (the classic table's protocol, a smaller model)."""
  e = SETS[dataset].epochs
  return [f"--config.{prefix}train.epochs={fmt_num(e)}",
          f"--config.{prefix}train.batch_size={args.batch}",
          f"--config.{prefix}train.optimizer=adam", f"--config.{prefix}train.learning_rate=0.001",
          f"--config.{prefix}train.schedule=step",
          f"--config.{prefix}train.decay_epochs=({fmt_num(0.5 * e)},{fmt_num(0.75 * e)})",
          f"--config.{prefix}train.decay_factor=0.1",
          f"--config.{prefix}train.select_metric=auc", f"--config.{prefix}train.select_mode=max",
          f"--config.{prefix}train.checkpoint_every=1000000",
          f"--config.{prefix}model.name={args.model}", f"--config.{prefix}model.width={args.width}"]


def generator_overrides(dataset: str, row: str, prefix: str = "") -> list[str]:
  """The generator's keys: under `generator.` in a recipe config, top level in its own run."""
  spec, r = SETS[dataset], ROWS[row]
  if r.variant in GANS:
    return [x.replace("--config.", f"--config.{prefix}", 1) for x in GAN_MODEL + GAN_TRAIN]
  out = list({"dit": DIT_MODEL, "ldm": LDM_MODEL}.get(r.variant, GENERATOR_MODEL))
  if r.variant != "dit":
    out.append(f"--config.model.unet.attn_resolutions=({spec.attention},)")
  out += list(GENERATOR_TRAIN) + [f"--config.train.steps={spec.generator_steps}"]
  out += [x for x in r.extra if x.startswith("--config.diffusion.")]
  out.append("--config.diffusion.grid_per_class=4")
  return [x.replace("--config.", f"--config.{prefix}", 1) for x in out]


def latent_overrides(args, dataset: str, generator: str, prefix: str = "") -> list[str]:
  """An LDM generator's autoencoder run (the row it needs), under `prefix`; [] for the others."""
  if ROWS[generator].variant != "ldm":
    return []
  (need,) = ROWS[generator].needs
  return [f"--config.{prefix}latent.autoencoder_run={run_dir(args.runs, dataset, need, 0)}"]


def build_command(args, dataset: str, row: str, seed: int) -> list[str]:
  """The argv of one cell, run from the repository root."""
  r = ROWS[row]
  workdir = run_dir(args.runs, dataset, row, seed)
  head = ["python", "-m", "jaxsynth.main"]
  if r.kind == "autoencoder":
    return head + ["--config", f"configs/autoencoder.py:{r.variant}", "--workdir", workdir,
                   "--config.seed=0"] + data_overrides(args, dataset) + \
        list(AUTOENCODER_MODEL) + list(AUTOENCODER_TRAIN)
  if r.kind == "generator":
    config = f"configs/{'bagan_gp' if r.variant in GANS else 'diffusion'}.py:{r.variant}"
    cmd = head + ["--config", config, "--workdir", workdir,
                  "--config.seed=0"] + data_overrides(args, dataset) + \
        generator_overrides(dataset, row)
    return cmd + latent_overrides(args, dataset, row)
  if r.kind == "classic":
    recipe = r.variant or BEST_CLASSIC[dataset]
    cmd = head + ["--config", f"configs/recipes.py:{recipe},npz", "--workdir", workdir,
                  f"--config.seed={seed}"] + data_overrides(args, dataset) + \
        classifier_overrides(args, dataset)
    if recipe in DECOUPLED:
      cmd.append(f"--config.recipe.stage1_workdir={run_dir(args.runs, dataset, 'ce', seed)}")
    return cmd
  spec = SETS[dataset]
  cmd = head + ["--config", f"configs/synthesis.py:{r.variant}", "--workdir", workdir,
                f"--config.seed={seed}"] + data_overrides(args, dataset) + \
      classifier_overrides(args, dataset) + generator_overrides(dataset, r.generator, "generator.")
  cmd += ["--config.generator.seed=0",
          f"--config.recipe.generator_workdir={run_dir(args.runs, dataset, r.generator, 0)}"]
  cmd += latent_overrides(args, dataset, r.generator, "generator.")
  cmd += list(SAMPLE)
  ce = run_dir(args.runs, dataset, "ce", seed)
  variant = r.variant.removesuffix("_ldm").removesuffix("_gan")
  if variant in ("augment", "diffupt", "equal_scale"):
    cmd.append(f"--config.recipe.baseline_workdir={ce}")
  if variant == "augment":
    cmd += ["--config.generator.sample.budget=balance",
            f"--config.generator.sample.per_class={spec.fill_to}"]
    if any("filter.name" in x for x in r.extra):
      cmd.append(f"--config.generator.sample.filter.classifier={ce}")
  if r.variant == "equal_scale":
    cmd.append(f"--config.recipe.target={spec.group_target}")
  if variant == "diffupt":
    cmd += [f"--config.recipe.pretrain_size={spec.pretrain_size}",
            "--config.recipe.cfg_scale=2.0"] + list(DIFFUPT_LRS)
  if r.variant in ("offline", "online"):
    cmd = [x for x in cmd if not x.startswith("--config.generator.sample.cfg_scale=")]
    cmd += ["--config.generator.sample.cfg_scale=0.0", f"--config.recipe.epochs={fmt_num(spec.epochs)}",
            f"--config.recipe.budget={spec.iois_budget}"]
  if r.variant == "online":
    offline = run_dir(args.runs, dataset, "iois_offline", seed)
    cmd.append(f"--config.recipe.baseline_workdir={os.path.join(offline, 'baseline')}")
  cmd += [x for x in r.extra if not x.startswith("--config.diffusion.")]
  return cmd


def dependencies(dataset: str, row: str, seed: int) -> list[tuple[str, str, int]]:
  """The cells whose run directories this cell reads (generator: seed 0; others: same seed)."""
  r = ROWS[row]
  deps = [(dataset, need, seed) for need in r.needs]
  if r.kind == "classic" and (r.variant or BEST_CLASSIC[dataset]) in DECOUPLED:
    deps.append((dataset, "ce", seed))
  if r.generator:
    deps.append((dataset, r.generator, 0))
  return deps


def planned_cells(args) -> list[tuple[str, str, int]]:
  """Every selected (set, row, seed) the study lists, seed-major (all seed-0 cells first)."""
  out = []
  seeds = sorted({s for name in args.rows for s in row_seeds(name, args.seeds)})
  for seed in seeds:
    for name in args.rows:
      for dataset in args.sets:
        if dataset in row_sets(name) and seed in row_seeds(name, args.seeds, dataset):
          out.append((dataset, name, seed))
  return out


def work_units(args, cells) -> list[tuple[str, str, int]]:
  """The runs to make: each cell without its JSON, preceded by the cells it needs whose run
  directories are missing (rerun to rebuild them). Order: dependencies first."""
  units, seen = [], set()

  def add(cell, as_dependency: bool):
    dataset, row, seed = cell
    if cell in seen:
      return
    done = os.path.isfile(cell_path(args.cells, dataset, row, seed))
    if as_dependency and finished_run(args.runs, dataset, row, seed):
      return
    if not as_dependency and done:
      return
    seen.add(cell)
    for dep in dependencies(dataset, row, seed):
      add(dep, True)
    units.append(cell)

  for cell in cells:
    add(cell, False)
  return units


# --- one cell ------------------------------------------------------------------------------------

def write_json_atomic(path: str, obj) -> None:
  """A cell's JSON (NaN as null, sorted keys), written atomically."""
  write_atomic(path, json.dumps(nan_to_none(obj), indent=1, sort_keys=True) + "\n")


def machine_record() -> dict:
  """Where a cell ran: CPU model and class, cores, jax version, GPU when one was used."""
  info = machine.cpu_info()
  record = {"cpu": info["model"], "machine_class": info["machine_class"], "cores": info["cores"]}
  try:
    record["jax"] = importlib.metadata.version("jax")
  except importlib.metadata.PackageNotFoundError:
    record["jax"] = None
  record["gpu"] = os.environ.get("JAXSYNTH_STUDY_GPU", "")
  return record


def _read(path: str):
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


def _test_metrics(metrics: dict | None) -> dict:
  keep = COMMON_METRICS + BINARY_METRICS + ("per_class_accuracy",)
  test = (metrics or {}).get("test", {})
  return {k: test[k] for k in keep if k in test}


def generator_identity(path: str) -> dict:
  """The generator a cell used: its run directory and a digest of its config.json."""
  config = os.path.join(path, "config.json")
  digest = ""
  if os.path.isfile(config):
    with open(config, "rb") as f:
      digest = hashlib.sha256(f.read()).hexdigest()[:16]
  return {"workdir": path, "config_sha256": digest}


def cell_result(args, dataset: str, row: str, seed: int) -> dict:
  """The small JSON of a finished cell, read from its run directory."""
  r, workdir = ROWS[row], run_dir(args.runs, dataset, row, seed)
  metrics = _read(os.path.join(workdir, "metrics.json")) or {}
  out = {"set": dataset, "row": row, "seed": seed, "kind": r.kind}
  info = dataset_info(os.path.join(args.data_dir, (SETS[dataset].file or dataset) + ".npz"))
  out["class_names"], out["train_counts"] = info["class_names"], info["train_counts"]
  if r.kind == "autoencoder":
    out["autoencoder"] = {"steps": metrics.get("steps"), "val": metrics.get("val"),
                          "latent_shape": metrics.get("latent_shape")}
    return out
  if r.kind == "generator":
    log_lines = []
    try:
      with open(os.path.join(workdir, "log.jsonl"), encoding="utf-8") as f:
        log_lines = [json.loads(line) for line in f if line.strip()]
    except (OSError, ValueError):
      pass
    rates = [x["train/steps_per_s"] for x in log_lines if "train/steps_per_s" in x]
    steps = metrics.get("steps", metrics.get("rounds", 0))   # a GAN counts rounds
    train = metrics.get("train", {})
    out["generator"] = {"steps": steps,
                        "train_loss": train.get("loss", train.get("generator_loss")),
                        "val_loss": metrics.get("val", {}).get("loss"),
                        "steps_per_s": rates[-1] if rates else None,
                        "train_s": steps / rates[-1] if rates and rates[-1] else None,
                        "identity": generator_identity(workdir)}
    return out
  if r.kind == "classic":
    out["metrics"] = _test_metrics(metrics)
    return out
  out["metrics"] = _test_metrics(metrics.get("recipe"))
  out["baseline_metrics"] = _test_metrics(metrics.get("baseline"))
  out["generator_quality"] = metrics.get("generator")
  out["filter_acceptance"] = metrics.get("filter_acceptance")
  sample = _read(os.path.join(workdir, "sample", "metrics.json")) or {}
  out["sampling"] = {k: sample.get(k) for k in ("images_per_s", "samples", "counts")}
  out["generator"] = generator_identity(run_dir(args.runs, dataset, r.generator, 0))
  return out


def execute(args, cell, stop: threading.Event | None = None) -> dict:
  """Runs one cell's command (resuming its run); writes its JSON unless one exists."""
  dataset, row, seed = cell
  cmd = build_command(args, dataset, row, seed)
  workdir = run_dir(args.runs, dataset, row, seed)
  os.makedirs(os.path.dirname(workdir), exist_ok=True)
  log_path = workdir + ".log"
  log(f"run {dataset}/{row}/seed{seed}: {shlex.join(cmd)}")
  t0 = time.time()
  rc = run_process(cmd, log_path, stop=stop)   # stopped: it checkpoints; a rerun resumes it
  wall = round(time.time() - t0, 1)
  ok = rc == 0 and finished_run(args.runs, dataset, row, seed)
  log(f"  {dataset}/{row}/seed{seed} {'ok' if ok else f'FAILED rc={rc} (see {log_path})'} "
      f"in {wall} s")
  path = cell_path(args.cells, dataset, row, seed)
  error = run_error(log_path) if rc == USER_ERROR_RC else ""
  if not ok and not error:
    return {"status": "failed", "rc": rc, "wall_s": wall}
  if os.path.isfile(path):
    return {"status": "rebuilt" if ok else "failed", "wall_s": wall}
  if error:   # the run refused its input (e.g. a filter kept no sample): a result, recorded
    result = {"set": dataset, "row": row, "seed": seed, "kind": ROWS[row].kind, "error": error}
  else:
    result = cell_result(args, dataset, row, seed)
  result.update(command=shlex.join(cmd), wall_s=wall, machine=machine_record(),
                finished=datetime.datetime.now().isoformat(timespec="seconds"))
  write_json_atomic(path, result)
  if args.commit:
    commit([path], f"synthesis_recipes: cell {dataset}/{row}/seed{seed} ({wall:.0f} s)")
  return {"status": "ran" if ok else "refused", "wall_s": wall}


def run_error(log_path: str) -> str:
  """The one-line `jaxsynth: error: ...` a run ended with when it refused its input ("" when
  none, or when the error says the run's own files are broken: BROKEN_RUN_ERRORS)."""
  try:
    with open(log_path, encoding="utf-8", errors="replace") as f:
      lines = [line.strip() for line in f if line.startswith("jaxsynth: error:")]
  except OSError:
    return ""
  error = lines[-1].removeprefix("jaxsynth: error:").strip() if lines else ""
  return "" if any(phrase in error.lower() for phrase in BROKEN_RUN_ERRORS) else error


def commit(paths: list[str], message: str) -> None:
  """Commits exactly `paths` (nothing else that is staged or changed)."""
  rel = [os.path.relpath(os.path.abspath(p), ROOT) for p in paths]
  subprocess.run(["git", "add", "--", *rel], cwd=ROOT, check=False)
  subprocess.run(["git", "commit", "-q", "-m", message, "--", *rel], cwd=ROOT, check=False)


def expected_wall(args, dataset: str, row: str) -> float:
  """The longest wall time of a finished cell of this set and row (0 when none)."""
  walls = []
  for seed in (0, 1, 2):
    cell = _read(cell_path(args.cells, dataset, row, seed))
    if cell and cell.get("wall_s"):
      walls.append(cell["wall_s"])
  return max(walls, default=0.0)


def run_all(args, units, t0: float) -> dict:
  """Runs `units`, --jobs at a time, each after the units it depends on."""
  pending, running, statuses = list(units), {}, {}
  stop = threading.Event()
  with concurrent.futures.ThreadPoolExecutor(max_workers=args.jobs) as pool:
    while pending or running:
      elapsed = time.time() - t0
      if args.deadline and elapsed >= args.deadline:
        stop.set()
      for unit in list(pending):
        if len(running) >= args.jobs or stop.is_set():
          break
        deps = dependencies(*unit)
        if any(d in pending or d in running.values() for d in deps):
          continue
        if any(not finished_run(args.runs, *d) for d in deps):
          pending.remove(unit)
          statuses[unit] = {"status": "failed", "reason": "a cell it needs did not finish"}
          continue
        if args.deadline and elapsed + expected_wall(args, unit[0], unit[1]) > args.deadline:
          continue
        pending.remove(unit)
        running[pool.submit(execute, args, unit, stop)] = unit
      if not running:
        for unit in pending:
          statuses[unit] = {"status": "not_started"}
        break
      done, _ = concurrent.futures.wait(running, timeout=5.0,
                                        return_when=concurrent.futures.FIRST_COMPLETED)
      for fut in done:
        statuses[running.pop(fut)] = fut.result()
  return statuses


# --- the document --------------------------------------------------------------------------------

def load_cells(cells: str) -> dict:
  """{(set, row, seed): cell JSON} of every committed cell under `cells`."""
  out = {}
  if not os.path.isdir(cells):
    return out
  for dataset in sorted(os.listdir(cells)):
    for row in sorted(os.listdir(os.path.join(cells, dataset))):
      folder = os.path.join(cells, dataset, row)
      for name in sorted(os.listdir(folder)):
        if name.startswith("seed") and name.endswith(".json"):
          cell = _read(os.path.join(folder, name))
          if cell is not None:
            out[(dataset, row, int(name[4:-5]))] = cell
  return out


def rarest_classes(cells: dict, dataset: str) -> list[int]:
  """The two classes with the fewest train images, from the set's info in any cell."""
  for (d, _, _), cell in cells.items():
    if d == dataset and cell.get("train_counts"):
      counts = cell["train_counts"]
      return sorted(range(len(counts)), key=lambda c: (counts[c], c))[:2]
  return []


def metric_value(cell: dict, metric: str):
  """A test metric of a cell; `classC_accuracy` is class C's accuracy."""
  m = cell.get("metrics", {})
  if metric.startswith("class") and metric.endswith("_accuracy"):
    per_class = m.get("per_class_accuracy")
    c = int(metric[5:-9])
    return per_class[c] if per_class and c < len(per_class) else None
  return m.get(metric)


def paired(cells: dict, dataset: str, row: str, ref: str, metric: str) -> dict | None:
  """Row minus ref over the seeds both have: mean and std of the paired differences, and
  whether the mean exceeds the seed-to-seed noise (the larger seed std of the two rows)."""
  seeds = sorted(s for (d, r, s) in cells if d == dataset and r == row
                 and (dataset, ref, s) in cells)
  a = [metric_value(cells[(dataset, row, s)], metric) for s in seeds]
  b = [metric_value(cells[(dataset, ref, s)], metric) for s in seeds]
  return pair_stats(list(zip(a, b)))


def pair_stats(pairs) -> dict | None:
  """Mean and std of x - y over the (x, y) pairs with both values; beyond_noise when |mean|
  exceeds the larger seed std of the two sides. None without a pair."""
  pairs = [(x, y) for x, y in pairs if x is not None and y is not None]
  if not pairs:
    return None
  mean, std = mean_std([x - y for x, y in pairs])
  noise = max(mean_std([x for x, _ in pairs])[1], mean_std([y for _, y in pairs])[1])
  beyond = len(pairs) >= 2 and not math.isnan(noise) and abs(mean) > noise
  return {"n": len(pairs), "mean": mean, "std": std, "noise": noise, "beyond_noise": beyond}


def fmt_paired(p: dict | None) -> str:
  if p is None:
    return "—"
  spread = "" if math.isnan(p["std"]) else f" ± {p['std']:.3f}"
  return f"{p['mean']:+.3f}{spread}{' **' if p['beyond_noise'] else ''}"


def fmt_acceptance(acceptance: dict) -> str:
  """`stage: class kept/attempted, ...` from a recipe's filter_acceptance."""
  parts = []
  for stage, record in sorted(acceptance.items()):
    per_class = (record or {}).get("acceptance", record or {}).get("per_class", {})
    shown = ", ".join(f"{name} {c.get('accepted', c.get('kept'))}/{c.get('attempted')}"
                      for name, c in per_class.items())
    parts.append(f"{stage}: {shown}" if shown else stage)
  return "; ".join(parts)


def own_baseline(cells: dict, dataset: str, row: str, metric: str) -> dict | None:
  """Like `paired`, against each cell's own in-pipeline baseline (baseline_metrics)."""
  return pair_stats((metric_value(cell, metric),
                     metric_value({"metrics": cell["baseline_metrics"]}, metric))
                    for (d, r, _), cell in cells.items()
                    if d == dataset and r == row and cell.get("baseline_metrics"))


def class_names_of(cells: dict, dataset: str) -> list[str]:
  for (d, _, _), cell in cells.items():
    if d == dataset and cell.get("class_names"):
      return list(cell["class_names"])
  return []


def accuracy_change_chart(cells: dict, dataset: str, rows: list[str], path: str) -> bool:
  """IOIS Fig. 2 style: mean per-class test accuracy change of each row against ce (PNG)."""
  from jaxsynth.metrics import plots  # pylint: disable=import-outside-toplevel
  names = class_names_of(cells, dataset)
  values = {}
  for row in rows:
    seeds = [s for (d, r, s) in cells if d == dataset and r == row and (d, "ce", s) in cells]
    deltas = []
    for s in seeds:
      a = cells[(dataset, row, s)].get("metrics", {}).get("per_class_accuracy")
      b = cells[(dataset, "ce", s)].get("metrics", {}).get("per_class_accuracy")
      if a and b and len(a) == len(b):
        deltas.append(np.asarray(a) - np.asarray(b))
    if deltas:
      mean = np.mean(deltas, axis=0)
      for c, v in enumerate(mean):
        label = names[c] if c < len(names) else str(c)
        values.setdefault(label, {})[row] = float(v)
  if not values:
    return False
  plots.write_png(path, plots.bar_chart(values, f"{dataset}: per-class test accuracy change vs ce",
                                        "accuracy change"))
  return True


def render(args, cells: dict) -> str:
  """docs/results/synthesis_recipes.md from the cells."""
  lines = ["# Does synthetic data help? Synthesis recipes against the classic ones on real data",
           "",
           "Generated by `bench/synthesis_recipes.py` from the committed cells in "
           "`docs/results/synthesis_recipes/cells/` (one JSON per set, row and seed: metrics, "
           "command, wall time, machine). Test split; mean ± sample std over classifier seeds. "
           "Paired columns: the row minus ce (or the best classic recipe) seed by seed, mean ± "
           "std of the differences; ** marks a mean difference larger than the seed-to-seed "
           "std of either row (the noise).", ""]
  if os.path.isfile(args.notes):
    with open(args.notes, encoding="utf-8") as f:
      lines += [f.read().strip(), ""]
  os.makedirs(args.figures, exist_ok=True)
  for dataset in SETS:   # every set, whichever --sets this call ran: the document is the study's
    here = {k: v for k, v in cells.items() if k[0] == dataset}
    if not here:
      lines += [f"## {dataset}", "", "No finished cells yet.", ""]
      continue
    lines += [f"## {dataset}", ""]
    gens = [(row, cell) for (d, row, s), cell in sorted(here.items())
            if cell.get("kind") == "generator"]
    if gens:
      lines += ["Generators (each trained once, shared by every recipe and seed of this set):",
                "", "| generator | steps | train time | final train / val loss | sampling "
                "images/s (its sweeps: mean, n) | command |", "|---|---|---|---|---|---|"]
      for row, cell in gens:
        g = cell["generator"]
        t = f"{g['train_s'] / 60:.0f} min" if g.get("train_s") else "—"
        loss = "/".join(f"{x:.4f}" if x is not None else "—"
                        for x in (g.get("train_loss"), g.get("val_loss")))
        rates = [c["sampling"]["images_per_s"] for (_, r, _), c in here.items()
                 if ROWS.get(r) and ROWS[r].generator == row
                 and (c.get("sampling") or {}).get("images_per_s")]
        rate = f"{np.mean(rates):.1f} ({len(rates)})" if rates else "—"
        lines.append(f"| {row} | {g.get('steps')} | {t} | {loss} | {rate} | "
                     f"`{cell['command']}` |")
      lines.append("")
    for (_, row, _), cell in sorted(here.items()):
      if cell.get("kind") == "autoencoder" and (cell.get("autoencoder") or {}).get("val"):
        val = cell["autoencoder"]["val"]
        lines += [f"LDM first stage `{row}`: {cell['autoencoder'].get('steps')} steps, latents "
                  f"{cell['autoencoder'].get('latent_shape')}, validation PSNR "
                  f"{val.get('psnr', float('nan')):.2f} dB, SSIM {val.get('ssim', float('nan')):.3f} "
                  f"({cell.get('wall_s', 0) / 60:.0f} min): `{cell['command']}`", ""]
    rows = [r for r in args.rows if ROWS[r].kind not in ("generator", "autoencoder")
            and any(k[1] == r and not c.get("error") for k, c in here.items())]
    names = class_names_of(cells, dataset)
    rare = rarest_classes(cells, dataset)
    binary = len(names) == 2
    keys = list(COMMON_METRICS) + (list(BINARY_METRICS) if binary else [])
    keys += [f"class{c}_accuracy" for c in rare]
    heads = ["macro-F1", "bal. acc", "MCC", "AUC", "acc"] + (
        ["sens.", "spec.", "harm. mean"] if binary else [])
    heads += [f"acc {names[c] if c < len(names) else c}" for c in rare]
    lines += ["| row | " + " | ".join(heads) + " | seeds | wall / cell |",
              "|---" * (len(heads) + 3) + "|"]
    refused = [(r, s, c["error"]) for (d, r, s), c in sorted(here.items()) if c.get("error")]
    here = {k: c for k, c in here.items() if not c.get("error")}
    for row in rows:
      seeds = sorted(s for (d, r, s) in here if r == row)
      vals = [here[(dataset, row, s)] for s in seeds]
      label = row if row != "best_classic" else f"best_classic ({BEST_CLASSIC.get(dataset)})"
      cols = [fmt_mean_std([metric_value(c, k) for c in vals]) for k in keys]
      wall = mean_std([c.get("wall_s") for c in vals])[0]
      lines.append(f"| {label} | " + " | ".join(cols) + f" | {len(seeds)} | "
                   f"{wall / 60:.1f} min |")
    lines.append("")
    if refused:
      lines += ["Cells whose run refused its input (no metrics; the reason is the run's own "
                "one-line error):", ""]
      lines += [f"- {r} seed {s}: {e}" for r, s, e in refused] + [""]
    pkeys = list(PAIRED_METRICS) + [f"class{c}_accuracy" for c in rare]
    pheads = ["macro-F1", "bal. acc", "MCC", "AUC"] + [
        f"acc {names[c] if c < len(names) else c}" for c in rare]
    for ref in ("ce", "best_classic"):
      others = [r for r in rows if r not in ("ce", ref)]
      if not any(k[1] == ref for k in here) or not others:
        continue
      lines += [f"Paired against {ref}:", "", "| row | " + " | ".join(pheads) + " |",
                "|---" * (len(pheads) + 1) + "|"]
      for row in others:
        lines.append(f"| {row} | " + " | ".join(
            fmt_paired(paired(cells, dataset, row, ref, k)) for k in pkeys) + " |")
      lines.append("")
    iois = [r for r in rows if ROWS[r].variant in ("offline", "online")]
    if iois:
      lines += ["IOIS rows against their own baseline (the same classifier evaluated at its "
                "last epoch, as IOIS evaluates; the ce row picks the best-AUC checkpoint):", "",
                "| row | " + " | ".join(pheads) + " |", "|---" * (len(pheads) + 1) + "|"]
      for row in iois:
        lines.append(f"| {row} | " + " | ".join(
            fmt_paired(own_baseline(here, dataset, row, k)) for k in pkeys) + " |")
      lines.append("")
    chart = os.path.join(args.figures, f"{dataset}_accuracy_change.png")
    if accuracy_change_chart(cells, dataset, [r for r in rows if r != "ce"], chart):
      rel = os.path.relpath(chart, os.path.dirname(os.path.abspath(args.out)))
      lines += [f"![per-class accuracy change vs ce]({rel})", ""]
    quality = [(row, s, c) for (d, row, s), c in sorted(here.items())
               if c.get("generator_quality")]
    if quality:
      lines += ["Generator quality on the synthetic set each cell trained on (per-class FID / "
                "KID×100 against the real train split, features of the cell's baseline "
                "classifier; FID needs more samples than feature dimensions to be reliable):", "",
                "| row | seed | class | n synthetic | FID | KID×100 |", "|---|---|---|---|---|---|"]
      for row, s, c in quality:
        g = c["generator_quality"]
        for cls, m in g.get("per_class", {}).items():
          lines.append(f"| {row} | {s} | {cls} | {g.get('synthetic') if cls == 'all' else ''}"
                       f" | {m.get('fid', float('nan')):.1f} | "
                       f"{100 * m.get('kid_mean', float('nan')):.2f} |")
      lines.append("")
    accepted = [(row, s, c["filter_acceptance"]) for (d, row, s), c in sorted(here.items())
                if c.get("filter_acceptance")]
    if accepted:
      lines += ["Filter acceptance:", "", "| row | seed | acceptance |", "|---|---|---|"]
      for row, s, a in accepted:
        lines.append(f"| {row} | {s} | {fmt_acceptance(a)} |")
      lines.append("")
    lines += ["<details><summary>Exact commands (from the repository root, with "
              "../shared/data)</summary>", "", "```"]
    for (d, row, s), c in sorted(here.items()):
      lines.append(f"{row} seed {s} ({c.get('wall_s', 0) / 60:.1f} min):\n  {c.get('command')}")
    lines += ["```", "", "</details>", ""]
  return "\n".join(lines)


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--sets", default=",".join(ALL_SETS))
  p.add_argument("--rows", default="all", help="comma-separated rows of ROWS")
  p.add_argument("--seeds", default="0,1,2")
  p.add_argument("--data-dir", default=os.path.join("..", "shared", "data"))
  p.add_argument("--width", type=int, default=16, help="ResNet-18 width (classic table: 64)")
  p.add_argument("--batch", type=int, default=128)
  p.add_argument("--model", default="resnet18")
  p.add_argument("--runs", default=os.path.join("runs", "synthesis_recipes"))
  p.add_argument("--cells", default=CELLS)
  p.add_argument("--out", default=DOC)
  p.add_argument("--notes", default=NOTES)
  p.add_argument("--figures", default=FIGURES)
  p.add_argument("--jobs", type=int, default=1)
  p.add_argument("--deadline", type=float, default=0.0,
                 help="seconds: no cell starts that its row's slowest finished cell says would "
                      "end after this; running cells get SIGTERM then (they resume); 0 = none")
  p.add_argument("--aggregate-only", action="store_true")
  p.add_argument("--dry-run", action="store_true", help="print the planned commands only")
  p.add_argument("--commit", action="store_true",
                 help="git-commit each finished cell's JSON (and the document at the end)")
  args = p.parse_args(argv)
  args.sets = [s for s in args.sets.split(",") if s]
  args.rows = list(ROWS) if args.rows == "all" else [r for r in args.rows.split(",") if r]
  bad = [s for s in args.sets if s not in SETS] + [r for r in args.rows if r not in ROWS]
  if bad:
    p.error(f"unknown set(s)/row(s) {bad}; sets: {list(SETS)}; rows: {list(ROWS)}")
  args.seeds = [int(s) for s in args.seeds.split(",") if s != ""]
  if args.jobs < 1:
    p.error(f"--jobs {args.jobs}: use 1 or more")
  return args


def main(argv=None) -> None:
  args = parse_args(argv)
  os.chdir(ROOT)
  t0 = time.time()
  statuses = {}
  if not args.aggregate_only:
    units = work_units(args, planned_cells(args))
    if args.dry_run:
      for unit in units:
        print(f"# {'/'.join(map(str, unit))}\n{shlex.join(build_command(args, *unit))}")
      return
    statuses = run_all(args, units, t0)
  cells = load_cells(args.cells)
  write_atomic(args.out, render(args, cells))
  if args.commit and not args.aggregate_only:
    figures = [os.path.join(args.figures, n) for n in os.listdir(args.figures)]
    commit([args.out] + figures, "synthesis_recipes: document regenerated from the cells")
  summary = {"cells": len(cells), "wall_s": round(time.time() - t0, 1),
             "ran": sum(s["status"] == "ran" for s in statuses.values()),
             "failed": ["/".join(map(str, k)) for k, s in statuses.items()
                        if s["status"] == "failed"],
             "not_started": ["/".join(map(str, k)) for k, s in statuses.items()
                             if s["status"] == "not_started"]}
  print(json.dumps(summary))


if __name__ == "__main__":
  main()
