"""Config building and validation: the keys every task understands, and clear errors."""

from __future__ import annotations

import json
import math
import os
from typing import Any, Iterable

import ml_collections

from jaxsynth.errors import CheckpointError, ConfigError
from jaxsynth.hardware import DTYPE_CHOICES

#: data.synthetic.mix: how synthetic sets join the real train split (data/mixture.py).
MIXES = ("count", "fraction", "only")
DATA_SOURCES = ("npz", "folder", "tfds", "digits", "synthetic")
OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("constant", "cosine", "step")
THRESHOLDS = ("argmax", "youden", "max_harmonic_mean")
SPLITS = ("train", "val", "test")
CONFIG_FILE = "config.json"     # a run's resolved config in its workdir


def base_config(task: str) -> ml_collections.ConfigDict:
  """Returns the keys shared by every task, with defaults; recipe files adjust them."""
  config = ml_collections.ConfigDict()
  config.task = task
  config.seed = 0

  config.data = data = ml_collections.ConfigDict()
  data.source = "digits"        # npz | folder | tfds | digits | synthetic
  data.path = ""                # file or directory of the source (npz, folder, synthetic)
  data.tfds_name = ""           # TFDS builder name, e.g. "mnist" (source=tfds)
  data.tfds_data_dir = ""       # directory holding the prepared TFDS data (source=tfds)
  data.image_size = 0           # resize to this square size; 0 keeps the native size
  data.channels = 0             # 1 or 3 converts gray<->RGB; 0 keeps the native channels
  data.num_classes = 0          # 0 infers it from the data
  data.imbalance_ratio = 0.0    # > 1 long-tails the train split: n_max / n_min, exponential
  data.class_counts = ()        # explicit train count per class (overrides imbalance_ratio)
  # train_classifier only: an .npy (1-D ints) or .json (list) of indices into the train split
  # (after imbalance_ratio/class_counts); the classifier trains on those samples only (e.g. the
  # real part of FairDiff's equal-scale set, written by recipe equal_scale). "" = every sample.
  data.train_indices_file = ""
  data.val_fraction = 0.1       # held out of train for sources without a val split
  data.test_fraction = 0.1      # held out of train for sources without a test split
  data.mean = 0.5               # images are scaled to [0, 1], then (x - mean) / std
  data.std = 0.5
  data.channel_mean = ()        # per-channel mean replacing data.mean, e.g. (0.485, 0.456, 0.406)
  data.channel_std = ()         # per-channel std replacing data.std, e.g. (0.229, 0.224, 0.225)
  data.threads = 4              # grain reader threads
  data.prefetch = 4             # batches prefetched ahead of the train step
  data.augment = aug = ml_collections.ConfigDict()
  aug.random_crop = False       # pad by crop_padding (reflect) and crop back at random
  aug.crop_padding = 4
  aug.hflip = False
  aug.vflip = False
  aug.rotation = 0.0            # max rotation in degrees (e.g. 30.0)
  aug.color_jitter = 0.0        # brightness/contrast/saturation strength in [0, 1)
  # Synthetic training data mixed with the real train split (val/test stay real); see
  # jaxsynth/data/mixture.py. paths: sampling-sweep workdirs (sample or filter runs) or samples/.
  data.synthetic = syn = ml_collections.ConfigDict()
  syn.paths = ()                # e.g. ('runs/sweep',); () = real data only
  syn.mix = "count"             # count: real + all synthetic, one sampler over the union
  #                               fraction: data.synthetic.fraction of every batch is synthetic
  #                               only: the synthetic sets alone (val and test stay real)
  syn.fraction = 0.5

  config.model = model = ml_collections.ConfigDict()
  model.name = "resnet18"
  model.stem = "small"          # small (3x3 conv, no pool; for 28-64 px) | imagenet (7x7 + pool)
  model.width = 64              # channels of the first stage
  model.dtype = "float32"       # compute dtype: float32 | bfloat16 | auto (params stay float32;
                                # auto = bf16 on GPU/TPU and AVX512-BF16/AMX CPUs, else float32)
  # Swin (swin_t/s/b/l) and ViT (vit_s/b) only; ResNets ignore these. See models/swin.py for the
  # patch/window chosen per image size when they are 0.
  model.patch_size = 0          # patch side in px; 0 = by image size (Swin: 2 up to 32 px, else 4)
  model.window_size = 0         # Swin attention window in tokens; 0 = by image size (7 at 224 px)
  model.drop_path = 0.1         # stochastic depth rate of the last block (linear from 0)
  model.embed_dim = 0           # 0 = the variant's (Swin-T 96); smaller for tiny test models
  model.depths = ()             # blocks per stage, () = the variant's (Swin-T (2, 2, 6, 2); ViT (12,))
  model.num_heads = ()          # heads per stage, () = the variant's (Swin-T (3, 6, 12, 24); ViT (6,))
  # Start from timm weights: a .safetensors (or .pth/.bin when torch is installed) state dict of
  # the same architecture; loaded by models.convert.apply_pretrained after init. "" = random init.
  # ImageNet weights expect ImageNet's statistics: --config.data.channels=3
  # --config.data.channel_mean="(0.485,0.456,0.406)" --config.data.channel_std="(0.229,0.224,0.225)"
  model.pretrained = ""

  config.train = train = ml_collections.ConfigDict()
  train.batch_size = 128        # global batch over all devices and hosts
  train.eval_batch_size = 256
  train.epochs = 10.0
  train.steps = 0               # > 0 overrides epochs
  train.optimizer = "adam"      # sgd | adam | adamw
  train.learning_rate = 1e-3
  train.momentum = 0.9          # sgd momentum
  train.nesterov = False
  train.weight_decay = 0.0      # decoupled for adamw, L2 on the gradient for sgd and adam
  train.schedule = "constant"   # constant | cosine | step
  train.warmup_epochs = 0.0
  train.decay_epochs = ()       # step schedule: multiply the rate by decay_factor at these epochs
  train.decay_factor = 0.1
  train.grad_clip = 0.0         # global-norm clip; 0 disables
  train.ema_decay = 0.0         # 0 keeps EMA params equal to the params
  train.label_smoothing = 0.0
  train.log_every = 10          # steps between log.jsonl lines
  train.eval_every = 0          # steps between validations; 0 = once per epoch
  train.checkpoint_every = 0    # steps between checkpoints; 0 = at every validation
  train.keep_checkpoints = 2
  train.select_metric = "balanced_accuracy"  # validation metric of the best checkpoint
  train.select_mode = "max"     # max | min
  # train_classifier: start from the chosen checkpoint (its metrics.json) of the finished
  # train_classifier run in this directory: params and model state (BatchNorm statistics), same
  # model keys and classes; fresh optimiser and step 0. Replaces model.pretrained. "" = init.
  train.init_from = ""

  config.mesh = mesh = ml_collections.ConfigDict()
  mesh.data = -1                # devices on the data axis; -1 = all devices of all hosts

  config.recipe = recipe = ml_collections.ConfigDict()
  recipe.name = "ce"            # loss and sampler together; see configs/recipes.py for the list
  recipe.class_weights = "inverse"  # weighted_ce(_sampler): inverse | sqrt_inverse | effective
  recipe.beta = 0.9999          # effective-number beta in [0, 1) (Cui et al.): effective, cb_focal
  recipe.gamma = 2.0            # focal exponent (Lin et al.): focal, cb_focal; 0 = cross-entropy
  recipe.sampler_q = 0.0        # weighted(_ce)_sampler: class drawn with p_c ~ n_c^q (0 = balanced)
  # Decoupled two-stage recipes (crt, lws, tau_norm, multistage_sampler; Kang et al. 2020):
  # stage 1 trains as `ce` into WORKDIR/stage1, stage 2 runs in WORKDIR/stage2.
  recipe.stage1_workdir = ""    # a finished `ce` run's workdir used as stage 1 (read only); "" = train
  recipe.stage2_epochs = 10.0   # stage-2 length in epochs (crt, lws, multistage_sampler)
  recipe.stage2_steps = 0       # > 0 overrides stage2_epochs
  recipe.stage2_learning_rate = 0.0  # stage-2 peak rate; 0 = train.learning_rate
  recipe.stage2_schedule = "cosine"  # stage-2 rate schedule: constant | cosine
  recipe.tau_grid = tuple(round(0.1 * i, 1) for i in range(21))  # tau_norm: tau candidates,
                                # chosen on val by train.select_metric (0 = the stage-1 head)

  config.evaluate = ev = ml_collections.ConfigDict()
  ev.run_dir = ""               # the train_classifier workdir to evaluate ("" = --workdir)
  ev.checkpoint = "best"        # best | latest: which checkpoint is evaluated
  ev.splits = ("val", "test")
  ev.positive_class = 1         # binary tasks: the class whose recall is sensitivity
  ev.threshold = "argmax"       # binary tasks: argmax | youden | max_harmonic_mean; the last two
                                # pick p(positive) >= t on val and apply t to every split
  ev.bootstrap = 0              # resamples for 95% percentile intervals per split; 0 = off
  return config


def _require(condition: bool, key: str, value: Any, fix: str) -> None:
  if not condition:
    raise ConfigError(f"config key '{key}' has bad value {value!r}: {fix}")


def _is_int(value: Any) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _one_of(key: str, value: Any, choices: Iterable[str]) -> None:
  choices = tuple(choices)
  _require(value in choices, key, value, f"use one of {', '.join(choices)}")


def validate(config: ml_collections.ConfigDict, known_tasks: Iterable[str]) -> None:
  """Raises ConfigError naming the first bad key; checks what every task shares."""
  _one_of("task", config.task, sorted(known_tasks))
  data, train = config.data, config.train
  _one_of("data.source", data.source, DATA_SOURCES)
  if data.source in ("npz", "folder", "synthetic"):
    _require(bool(data.path), "data.path", data.path,
             f"data.source={data.source} needs --config.data.path=FILE_OR_DIR")
  if data.source == "tfds":
    _require(bool(data.tfds_name), "data.tfds_name", data.tfds_name,
             "data.source=tfds needs --config.data.tfds_name=NAME")
  _require(data.image_size >= 0, "data.image_size", data.image_size, "use 0 (native) or > 0")
  _require(data.channels in (0, 1, 3), "data.channels", data.channels, "use 0, 1 or 3")
  _require(data.imbalance_ratio == 0 or data.imbalance_ratio >= 1, "data.imbalance_ratio",
           data.imbalance_ratio, "use 0 (as is) or a ratio >= 1")
  _require(data.num_classes >= 0, "data.num_classes", data.num_classes,
           "use 0 (from the data) or the number of classes")
  _require(all(_is_int(c) for c in data.class_counts), "data.class_counts", data.class_counts,
           "give whole numbers, one per class, e.g. --config.data.class_counts='(500, 50)'")
  _require(all(int(c) >= 1 for c in data.class_counts), "data.class_counts", data.class_counts,
           "every class needs at least 1 sample")
  for key in ("val_fraction", "test_fraction"):
    _require(0 <= data[key] < 1, f"data.{key}", data[key], "use a fraction in [0, 1)")
  _require(_is_number(data.mean), "data.mean", data.mean, "use a finite number, e.g. 0.5")
  _require(_is_number(data.std) and data.std > 0, "data.std", data.std,
           "use a positive number, e.g. 0.5")
  for key in ("channel_mean", "channel_std"):
    _require(all(_is_number(v) for v in data[key]), f"data.{key}", data[key],
             "use finite numbers, e.g. (0.485, 0.456, 0.406)")
  for key in ("channel_mean", "channel_std"):
    _require(len(data[key]) in (0, 1, 3), f"data.{key}", data[key],
             "give one value per channel (1 or 3), or () to use the scalar")
    _require(not (data.channels and len(data[key]) not in (0, 1, data.channels)),
             f"data.{key}", data[key], f"give {data.channels} values (data.channels)")
  _require(all(float(s) > 0 for s in data.channel_std), "data.channel_std", data.channel_std,
           "use positive numbers")
  _require(0 <= data.augment.color_jitter < 1, "data.augment.color_jitter",
           data.augment.color_jitter, "use a strength in [0, 1)")
  indices_file = data.get("train_indices_file", "")
  _require(isinstance(indices_file, str), "data.train_indices_file", indices_file,
           "give an .npy or .json file of train indices, or \"\"")
  _require(not indices_file or config.task in ("train_classifier", "evaluate"),
           "data.train_indices_file", indices_file,
           f"only train_classifier trains on a subset of the train split; task {config.task} "
           "would ignore it: leave it empty")
  _one_of("data.synthetic.mix", data.synthetic.mix, MIXES)
  _require(data.synthetic.mix != "only" or bool(data.synthetic.paths), "data.synthetic.mix",
           data.synthetic.mix, "mix=only trains on the synthetic sets alone: set "
           "data.synthetic.paths to sweep directories, or use mix=count")
  _require(data.synthetic.mix != "only" or not indices_file, "data.train_indices_file",
           indices_file, "mix=only trains on the synthetic sets alone, so no real subset is "
           "used: leave it empty, or use mix=count")
  init_from = train.get("init_from", "")
  _require(isinstance(init_from, str) and
           (not init_from or config.task in ("train_classifier", "evaluate")), "train.init_from",
           init_from, f"only train_classifier starts from a trained run; task {config.task} "
           "would ignore it: leave it empty")
  _require(all(isinstance(p, str) and p for p in data.synthetic.paths), "data.synthetic.paths",
           data.synthetic.paths, "give sweep directories, e.g. --config.data.synthetic.paths="
           "\"('runs/sweep',)\"")
  _require(train.batch_size > 0, "train.batch_size", train.batch_size, "use a positive integer")
  _require(train.eval_batch_size > 0, "train.eval_batch_size", train.eval_batch_size,
           "use a positive integer")
  _require(train.steps > 0 or train.epochs > 0, "train.epochs", train.epochs,
           "set train.epochs > 0 or train.steps > 0")
  _one_of("train.optimizer", train.optimizer, OPTIMIZERS)
  _one_of("train.schedule", train.schedule, SCHEDULES)
  _require(train.learning_rate > 0 and math.isfinite(train.learning_rate),
           "train.learning_rate", train.learning_rate, "use a positive number")
  _require(0 <= train.ema_decay < 1, "train.ema_decay", train.ema_decay, "use a value in [0, 1)")
  _one_of("train.select_mode", train.select_mode, ("max", "min"))
  _one_of("model.dtype", config.model.dtype, DTYPE_CHOICES)
  _one_of("evaluate.threshold", config.evaluate.threshold, THRESHOLDS)
  _one_of("evaluate.checkpoint", config.evaluate.checkpoint, ("best", "latest"))
  splits = tuple(config.evaluate.splits)
  _require(bool(splits) and all(s in SPLITS for s in splits), "evaluate.splits", splits,
           f"use a tuple of splits among {', '.join(SPLITS)}")
  _require(config.evaluate.bootstrap >= 0, "evaluate.bootstrap", config.evaluate.bootstrap,
           "use 0 (off) or a number of resamples, e.g. 1000")
  _require(config.mesh.data == -1 or config.mesh.data > 0, "mesh.data", config.mesh.data,
           "use -1 (all devices) or a positive device count")


def to_json(config: ml_collections.ConfigDict) -> str:
  """Serialises the resolved config as stable, sorted JSON."""
  return json.dumps(config.to_dict(), indent=2, sort_keys=True, default=list)


# ------------------------------------------------------------- trained runs read as inputs


def read_run_config(run_dir: str, task: str | tuple[str, ...], key: str) -> dict:
  """The resolved config.json of the `task` run (or one of the `task` tuple) in `run_dir`,
  which config key `key` names.

  Raises CheckpointError naming the directory or file when it is missing, unreadable, not a
  JSON object, or the config of another task.
  """
  tasks = (task,) if isinstance(task, str) else tuple(task)
  fix = f"set {key} to the --workdir of a {' or '.join(tasks)} run"
  path = os.path.join(run_dir, CONFIG_FILE)
  if not os.path.isdir(run_dir):
    what = "is not a directory" if os.path.lexists(run_dir) else "does not exist"
    raise CheckpointError(f"config key '{key}' has bad value {run_dir!r}: the directory {what}; "
                          f"{fix}")
  try:
    with open(path, encoding="utf-8") as f:
      trained = json.load(f)
  except FileNotFoundError:
    raise CheckpointError(f"{path} not found: {run_dir} is no run directory; {fix}") from None
  except OSError as e:
    raise CheckpointError(f"{path} cannot be read ({e.strerror}): fix its permissions, or "
                          f"{fix}") from None
  except ValueError as e:
    raise CheckpointError(f"{path} is not valid JSON ({e}): the run's config is damaged; "
                          f"restore it, or {fix}") from None
  if not isinstance(trained, dict) or not all(isinstance(trained.get(k), dict)
                                             for k in ("model", "data")):
    raise CheckpointError(f"{path} is not a resolved jaxsynth config (no 'model' and 'data' "
                          f"keys): {fix}")
  if trained.get("task") not in tasks:
    raise CheckpointError(f"{path} is a {trained.get('task')!r} run, not a {' or '.join(tasks)} "
                          f"run: {fix}")
  return trained


def checkpoint_steps(run_dir: str, which: str) -> list[int]:
  """The steps saved under run_dir/checkpoints/<which> (latest | best), oldest first."""
  root = os.path.join(run_dir, "checkpoints", which)
  if not os.path.isdir(root):
    return []
  return sorted(int(d) for d in os.listdir(root)
                if d.isdigit() and os.path.isdir(os.path.join(root, d)))
