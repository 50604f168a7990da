"""One classifier run: setup, the jitted train and predict steps, training with checkpoints, and
evaluation with clinical metrics. Tasks `train_classifier` / `evaluate` run it (tasks/classifier.py),
and every recipe that trains a classifier builds on its parts (decoupled stage 2, pretrain/finetune).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from clu import parameter_overview

from jaxsynth import config as config_lib
from jaxsynth import faults
from jaxsynth.data import augment, mixture, pipeline
from jaxsynth.data.base import ImageSource, group_ids
from jaxsynth.data.pipeline import input_shape
from jaxsynth.data.sources import open_source
from jaxsynth.data.sources.synthetic import SyntheticSource
from jaxsynth.errors import CheckpointError, ConfigError
from jaxsynth.metrics import report
from jaxsynth.metrics.classification import classification_metrics, group_metrics
from jaxsynth.models import convert
from jaxsynth.models.registry import make_classifier
from jaxsynth.recipes.losses import make_loss, num_outputs, probabilities
from jaxsynth.recipes.samplers import make_index_order
from jaxsynth.training import parallel, train_state, workdir as workdir_lib
from jaxsynth.training.checkpoint import Checkpointer
from jaxsynth.training.loop import LoopSettings, StopRequest, train_loop
from jaxsynth.training.optim import learning_rate_schedule, make_optimizer
from jaxsynth.training.train_state import init_state
from jaxsynth.training.writers import MetricWriter, image_grid

log = logging.getLogger(__name__)

MIXTURE_FILE = "mixture.json"   # per-class (and per-group) counts of a mixed training set


@dataclasses.dataclass
class Setup:
  """What the classifier tasks derive from the config: data, model, mesh and step counts."""
  train: ImageSource
  model: nn.Module
  mesh: jax.sharding.Mesh
  input_shape: tuple[int, int, int]
  num_classes: int
  steps_per_epoch: int
  total_steps: int


def mixed_train_split(config) -> ImageSource:
  """The real train split (its `data.train_indices_file` subset if set), followed by the
  synthetic sets of `data.synthetic.paths` if any (mix=only: the synthetic sets alone)."""
  train = mixture.train_subset(open_source(config.data, "train", seed=config.seed),
                               config.data.get("train_indices_file", ""))
  paths = tuple(config.data.synthetic.paths)
  if not paths:
    return train
  parts = [train]
  for path in paths:
    synthetic = SyntheticSource(path)
    mixture.check_synthetic(train, synthetic, config.data, path)
    parts.append(synthetic)
  if config.data.synthetic.mix == "only":
    only = mixture.ConcatSource(parts[1:])
    only.class_names = train.class_names  # the real data's names, for reports
    return only
  return mixture.ConcatSource(parts)


def build_setup(config) -> Setup:
  """Opens the train split and derives model, mesh and schedule lengths from the config."""
  if config.model.pretrained:
    convert.check_pretrained_file(config.model.pretrained)
  train = mixed_train_split(config)
  mesh = parallel.make_mesh(config.mesh)
  parallel.check_batch_divisible(config.train.batch_size, mesh, "train.batch_size")
  parallel.check_batch_divisible(config.train.eval_batch_size, mesh, "train.eval_batch_size")
  epoch_samples, epoch_batch = len(train), config.train.batch_size
  if config.data.synthetic.paths and config.data.synthetic.mix == "fraction":
    # an epoch is one pass over the real split, at its B - n_s slots per batch
    epoch_samples = len(train.parts[0])
    epoch_batch -= mixture.synthetic_slots(config.data.synthetic.fraction, epoch_batch)
  steps_per_epoch = max(1, -(-epoch_samples // epoch_batch))
  total = (config.train.steps if config.train.steps > 0
           else max(1, int(round(config.train.epochs * steps_per_epoch))))
  model = make_classifier(config.model, num_outputs(config, train.num_classes))
  report.check_select_metric(config.train.select_metric, train.num_classes)
  return Setup(train, model, mesh, input_shape(config.data, train), train.num_classes,
               steps_per_epoch, total)


def make_train_step(model: nn.Module, tx, loss_fn, schedule, ema_decay: float, mesh,
                    probs_fn=None, trainable=None):
  """The jitted, donated step: (state, batch) -> (state, metrics) on a batch-sharded batch."""
  # probs_fn maps logits to class probabilities for the accuracy; None means softmax, whose
  # argmax is the logits' argmax. trainable is a pytree of Python bools shaped like the params
  # (None: all train); frozen leaves get no gradient (none is computed) and leave the step
  # bit-identical, params and EMA alike (the decoupled recipes freeze the backbone this way).
  scores = probs_fn or (lambda logits: logits)

  def select(new, old):
    if trainable is None:
      return new
    return jax.tree.map(lambda t, a, b: a if t else b, trainable, new, old)

  def step(state: train_state.TrainState, batch):
    images = jax.lax.with_sharding_constraint(batch["image"], parallel.batch_sharding(mesh))
    dropout_key = jax.random.fold_in(state.rng, state.step)

    def compute_loss(params):
      if trainable is not None:
        params = jax.tree.map(lambda t, p: p if t else jax.lax.stop_gradient(p), trainable,
                              params)
      logits, new_model_state = model.apply(
          {"params": params, **state.model_state}, images, train=True,
          mutable=list(state.model_state), rngs={"dropout": dropout_key})
      return loss_fn(logits, batch["label"]), (logits, new_model_state)

    (loss, (logits, model_state)), grads = jax.value_and_grad(
        compute_loss, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = select(optax.apply_updates(state.params, updates), state.params)
    grad_norm = optax.tree.norm(grads)
    new_state = state.replace(
        step=state.step + 1, params=params, model_state=model_state, opt_state=opt_state,
        ema_params=select(train_state.ema_update(state.ema_params, params, ema_decay,
                                                   state.step),
                          state.ema_params))
    metrics = {"loss": loss, "grad_norm": grad_norm, "learning_rate": schedule(state.step),
               "accuracy": jnp.mean(jnp.argmax(scores(logits), -1) == batch["label"]),
               "finite": jnp.isfinite(loss) & jnp.isfinite(grad_norm)}
    return new_state, metrics

  replicated = parallel.replicated(mesh)
  return jax.jit(step, in_shardings=(replicated, parallel.batch_sharding(mesh)),
                 out_shardings=(replicated, replicated), donate_argnums=0)


def make_predict_step(model: nn.Module, use_ema: bool, mesh, probs_fn=None):
  """The jitted evaluation forward: (state, images) -> class probabilities, batch-sharded."""
  # probs_fn maps logits to (N, num_classes) probabilities (recipes.losses.probabilities);
  # None means softmax.
  probs_fn = probs_fn or (lambda logits: jax.nn.softmax(logits.astype(jnp.float32), axis=-1))

  def predict(state: train_state.TrainState, images):
    params = state.ema_params if use_ema else state.params
    logits = model.apply({"params": params, **state.model_state}, images, train=False)
    return probs_fn(logits)

  return jax.jit(predict, in_shardings=(parallel.replicated(mesh), parallel.batch_sharding(mesh)),
                 out_shardings=parallel.batch_sharding(mesh))


def predict_split(predict, state, source: ImageSource, data_cfg, global_batch: int, mesh):
  """Class probabilities for every sample of `source` exactly once: (labels, probs) in order."""
  sharding = parallel.batch_sharding(mesh)
  labels, probs, masks = [], [], []
  for batch in pipeline.eval_dataset(source, data_cfg, global_batch=global_batch,
                                     process_index=jax.process_index(),
                                     process_count=jax.process_count()):
    global_batch_arrays = parallel.to_global(batch, sharding)
    out = predict(state, global_batch_arrays["image"])
    host = parallel.to_host({"probs": out, "label": global_batch_arrays["label"],
                             "mask": global_batch_arrays["mask"]})
    probs.append(host["probs"])
    labels.append(host["label"])
    masks.append(host["mask"])
  keep = np.concatenate(masks) > 0
  return np.concatenate(labels)[keep].astype(np.int64), np.concatenate(probs)[keep]


@dataclasses.dataclass
class Plan:
  """One training run on a Setup: initial state, optimiser, schedule, sample order, what trains."""
  state: train_state.TrainState
  tx: optax.GradientTransformation
  schedule: optax.Schedule
  index_order: object           # position -> source index (recipes.samplers)
  trainable: object = None      # pytree of bools like the params; None = every param trains
  extra: dict | None = None     # entries for metrics.json (e.g. where training started from)


def plan_training(config, setup: Setup) -> Plan:
  """The plan of a plain run: fresh init (or train.init_from's / model.pretrained's weights),
  config.train's optimiser, the recipe's sampler."""
  schedule = learning_rate_schedule(config.train, setup.steps_per_epoch, setup.total_steps)
  tx = make_optimizer(config.train, schedule)
  pretrained, extra = None, None
  if config.train.get("init_from", ""):  # that run started from model.pretrained if set: not again
    pretrained, record = init_from_variables(config, setup)
    extra = {"init_from": record}
  elif config.model.pretrained:
    pretrained = functools.partial(convert.apply_pretrained, config.model)
  state = init_state(setup.model, tx, setup.input_shape, config.seed, setup.mesh,
                     pretrained=pretrained)
  return Plan(state, tx, schedule, training_order(config, setup), extra=extra)


def training_order(config, setup: Setup):
  """The recipe's sampler over the training data; in `fraction` mixing, one per part."""
  syn = config.data.synthetic
  if not (syn.paths and syn.mix == "fraction"):
    return make_index_order(config, setup.train.labels, setup.num_classes,
                            setup.steps_per_epoch, setup.total_steps)
  batch = config.train.batch_size
  n_s = mixture.synthetic_slots(syn.fraction, batch)
  real = setup.train.parts[0]
  synthetic_labels = setup.train.labels[len(real):]
  # Each part's sampler sees its own batch size: n_s synthetic, B - n_s real slots per step.
  part_config = config.copy_and_resolve_references()
  part_config.train.batch_size = batch - n_s
  real_order = make_index_order(part_config, real.labels, setup.num_classes,
                                setup.steps_per_epoch, setup.total_steps)
  part_config.train.batch_size = n_s
  synthetic_order = make_index_order(part_config, synthetic_labels, setup.num_classes,
                                     setup.steps_per_epoch, setup.total_steps)
  return mixture.FractionOrder(real_order, synthetic_order, len(real), batch, n_s)


# ------------------------------------------------------- starting from a trained classifier run

#: model keys that leave the parameters' shapes alone: a run may start from (train.init_from)
#: a run that differs in these only.
INIT_FROM_FREE_MODEL_KEYS = ("dtype", "pretrained", "drop_path")


def trained_class_count(run_dir: str) -> int | None:
  """The class count a finished classifier run reported (its metrics.json); None if unknown."""
  try:
    with open(os.path.join(run_dir, workdir_lib.METRICS_FILE), encoding="utf-8") as f:
      return next(len(m["per_class_accuracy"]) for m in json.load(f).values()
                  if isinstance(m, dict) and "per_class_accuracy" in m)
  except (OSError, ValueError, StopIteration, TypeError, AttributeError):
    return None


def check_same_model(config, trained: dict, path: str, where: str = "", free=(),
                     fix: str = "pass the same model keys") -> None:
  """Raises ConfigError unless the run config `trained` (read from `path`) has `config`'s model
  keys (but `free`) and head (bce has one logit); `where` starts the message."""
  lead = f"{where}: " if where else ""
  model = json.loads(config_lib.to_json(config))["model"]  # as config.json stores it (lists)
  changes = workdir_lib.config_diff({k: v for k, v in trained["model"].items() if k not in free},
                                    {k: v for k, v in model.items() if k not in free}, "model.")
  if changes:
    shown = "; ".join(changes[:6]) + (f"; and {len(changes) - 6} more" if len(changes) > 6 else "")
    raise ConfigError(f"{lead}config keys differ from the trained run's {path} (its value -> "
                      f"this config's: {shown}): {fix}")
  trained_recipe = trained.get("recipe", {}).get("name", "ce")
  if (trained_recipe == "bce") != (config.recipe.name == "bce"):
    raise ConfigError(f"{lead}config 'recipe.name' {config.recipe.name!r} and the trained run's "
                      f"{trained_recipe!r} ({path}) give different heads (bce has one "
                      f"logit); pass --config.recipe.name={trained_recipe}")


def check_init_from(config, num_classes: int | None = None, workdir: str | None = None) -> dict:
  """The finished run `train.init_from` names, checked against `config` (its model keys, the
  class count when given, and not `workdir` itself): {"dir", "which", "step", "config"}.

  Raises CheckpointError when the directory is missing, unfinished, another task's or lacks its
  chosen checkpoint, ConfigError when its model or classes differ.
  """
  run_dir = config.train.get("init_from", "")
  key = "config key 'train.init_from'"
  fix = "give the --workdir of a finished train_classifier run of this model and data"
  if workdir and os.path.realpath(run_dir) == os.path.realpath(workdir):
    raise ConfigError(f"{key} names --workdir {workdir} itself, but a run cannot start from its "
                      f"own result: {fix}, or leave the key empty")
  trained = config_lib.read_run_config(run_dir, "train_classifier", "train.init_from")
  metrics_path = os.path.join(run_dir, workdir_lib.METRICS_FILE)
  try:
    with open(metrics_path, encoding="utf-8") as f:
      chosen = json.load(f).get("checkpoint")
  except FileNotFoundError:
    raise CheckpointError(f"{key}: {run_dir} holds an unfinished run (no "
                          f"{workdir_lib.METRICS_FILE}): finish it first (rerun its command; it "
                          f"resumes), or {fix}") from None
  except (OSError, ValueError, AttributeError) as e:
    raise CheckpointError(f"{key}: {metrics_path} cannot be read ({e}): restore it, or "
                          f"{fix}") from None
  if not (isinstance(chosen, dict) and chosen.get("which") in ("best", "latest")
          and isinstance(chosen.get("step"), int)):
    raise CheckpointError(f"{key}: {metrics_path} names no evaluated checkpoint (its "
                          f"'checkpoint' entry), so {run_dir} is no single classifier run: {fix}")
  which, step = chosen["which"], chosen["step"]
  if step not in config_lib.checkpoint_steps(run_dir, which):
    raise CheckpointError(f"{key}: {run_dir} lacks its chosen checkpoint "
                          f"checkpoints/{which}/{step} (a decoupled recipe keeps its checkpoints "
                          f"in stage1/ and stage2/): restore it, or {fix}")
  check_same_model(config, trained, os.path.join(run_dir, workdir_lib.CONFIG_FILE), key,
                   INIT_FROM_FREE_MODEL_KEYS, f"pass the same model keys, or {fix}")
  classes = trained_class_count(run_dir)
  if num_classes is not None and classes is not None and classes != num_classes:
    raise ConfigError(f"{key}: the run in {run_dir} was trained on {classes} classes but this "
                      f"config's data has {num_classes}: {fix}, or leave the key empty")
  return {"dir": os.path.abspath(run_dir), "which": which, "step": step, "config": trained}


def run_variables(run_config, setup: Setup, directory: str, which: str,
                  step: int | None = None):
  """(params, model_state, step, state) of checkpoint `which` (newest, or `step`) of the
  classifier run in `directory` trained with `run_config`; params are its EMA when it kept one."""
  # The optimiser only shapes the saved state (its schedule is no part of it).
  tx = make_optimizer(run_config.train, optax.constant_schedule(0.0))
  template = train_state.abstract_state(setup.model, tx, setup.input_shape, setup.mesh)
  checkpointer = Checkpointer(directory, run_config.train.keep_checkpoints, read_only=True)
  try:
    state, meta = checkpointer.restore(template, which, step)
  finally:
    checkpointer.close()
  params = state.ema_params if run_config.train.ema_decay > 0 else state.params
  return params, state.model_state, int(meta["step"]), state


def init_from_variables(config, setup: Setup):
  """(fn(fresh variables) -> the variables of train.init_from's chosen checkpoint, its record
  {"dir", "which", "step"} for metrics.json)."""
  origin = check_init_from(config, setup.num_classes)
  run_config = ml_collections.ConfigDict(origin["config"])
  params, model_state, _, _ = run_variables(run_config, setup, origin["dir"], origin["which"],
                                            origin["step"])
  loaded = {"params": params, **model_state}
  record = {k: origin[k] for k in ("dir", "which", "step")}

  def leaves(tree):
    return [(jax.tree_util.keystr(path), tuple(x.shape), str(x.dtype))
            for path, x in jax.tree_util.tree_flatten_with_path(tree)[0]]

  def replace(fresh):
    if leaves(fresh) != leaves(loaded):
      raise CheckpointError(f"config key 'train.init_from': the parameters in {origin['dir']} "
                            "do not fit this model (other shapes): give a run of this model")
    log.info("starting from %s (checkpoint %s/%d): params and model state; fresh optimiser",
             origin["dir"], origin["which"], origin["step"])
    return loaded

  return replace, record


def train_single(config, workdir: str, overwrite: bool = False,
                 stop: StopRequest | None = None) -> dict:
  """Trains one classifier (resuming if `workdir` holds an unfinished run), then evaluates."""
  done = workdir_lib.finished_results(workdir, config, overwrite)
  if done is not None:
    return done
  if config.train.get("init_from", ""):
    check_init_from(config, workdir=workdir)  # before anything is written
  workdir_lib.prepare(workdir, config, overwrite)
  setup = build_setup(config)
  plan = plan_training(config, setup)
  return train_plan(config, setup, plan, workdir, stop=stop, extra=plan.extra)


def train_plan(config, setup: Setup, plan: Plan, directory: str, out_dir: str | None = None,
              stop: StopRequest | None = None, extra: dict | None = None) -> dict:
  """Trains `plan` with checkpoints and logs in `directory` (resuming), then evaluates.

  Training runs to setup.total_steps under config.train's loop settings; the checkpoint
  `evaluate.checkpoint` is then evaluated into `out_dir` (default `directory`); `extra`
  entries are added to its metrics.json.
  """
  log.info("train split of %s: %d samples, class counts %s", setup.train.name,
           len(setup.train), setup.train.class_counts().tolist())
  subset = config.data.get("train_indices_file", "")
  if (config.data.synthetic.paths or subset) and jax.process_index() == 0:
    mix = dict(mixture.counts(setup.train), mix=config.data.synthetic.mix)
    if subset:
      mix["train_indices_file"] = subset
    if config.data.synthetic.mix == "fraction":
      mix["synthetic_per_batch"] = mixture.synthetic_slots(config.data.synthetic.fraction,
                                                           config.train.batch_size)
    log.info("training mixture: %s", json.dumps(mix))
    workdir_lib.write_json(os.path.join(directory, MIXTURE_FILE), mix)
  val = open_source(config.data, "val", seed=config.seed)
  state = plan.state
  log.info("%s: %s parameters", config.model.name,
           f"{parameter_overview.count_parameters(state.params):,}")
  checkpointer = Checkpointer(directory, config.train.keep_checkpoints)
  state, meta = checkpointer.resume(state)
  start = int(jax.device_get(state.step))

  loss_fn = make_loss(config, setup.train.class_counts(), setup.num_classes)
  step_fn = make_train_step(setup.model, plan.tx, loss_fn, plan.schedule,
                            config.train.ema_decay, setup.mesh, probabilities(config),
                            plan.trainable)
  use_ema = config.train.ema_decay > 0
  predict = make_predict_step(setup.model, use_ema, setup.mesh, probabilities(config))

  def validate(current_state) -> dict:
    labels, probs = predict_split(predict, current_state, val, config.data,
                                  config.train.eval_batch_size, setup.mesh)
    return classification_metrics(labels, probs, setup.num_classes,
                                  positive_class=config.evaluate.positive_class)

  dataset = pipeline.train_dataset(
      setup.train, config.data, global_batch=config.train.batch_size, seed=config.seed,
      start_step=start, num_steps=setup.total_steps, process_index=jax.process_index(),
      process_count=jax.process_count(), index_order=plan.index_order)
  settings = LoopSettings.from_train_config(config.train, setup.total_steps, setup.steps_per_epoch)
  writer = MetricWriter(directory, resume_step=start)

  def preview(local_batch):
    mean, std = augment.normalisation(config.data)
    grid = image_grid(local_batch["image"][:64], mean=mean, std=std)
    writer.image(start, "train/first_batch", grid)

  try:
    batches = parallel.global_batches(dataset, setup.mesh, preview)
    state, meta = train_loop(state, step_fn, batches, settings, checkpointer, writer, validate,
                             meta, stop)
    results = evaluate_checkpoint(config, setup, checkpointer, state, predict,
                                   out_dir or directory, extra)
  finally:
    writer.close()
    checkpointer.close()
  return results


def evaluate_checkpoint(config, setup: Setup, checkpointer: Checkpointer, state, predict,
                         out_dir: str, extra: dict | None = None) -> dict:
  """Evaluates the chosen checkpoint on the configured splits; writes metrics and predictions."""
  which = config.evaluate.checkpoint
  if checkpointer.latest_step(which) is None:
    raise CheckpointError(f"no '{which}' checkpoint in {checkpointer.latest.directory}/..; "
                          "train first, or set evaluate.checkpoint=latest")
  state, meta = checkpointer.restore(state, which)
  results = {"checkpoint": {"which": which, "step": int(meta["step"])}}
  predictions, groups = {}, {}
  for split in config.evaluate.splits:
    source = open_source(config.data, split, seed=config.seed)
    predictions[split] = predict_split(predict, state, source, config.data,
                                       config.train.eval_batch_size, setup.mesh)
    if source.groups is not None:
      groups[split] = source
  results.update(score_predictions(config, setup.num_classes, predictions, state, predict,
                                   setup, groups))
  results.update(extra or {})
  if jax.process_index() == 0:
    arrays = {}
    for split, (labels, probs) in predictions.items():
      if split in config.evaluate.splits:
        arrays[f"{split}_labels"], arrays[f"{split}_probs"] = labels, probs
    workdir_lib.write_npz(os.path.join(out_dir, "predictions.npz"), **arrays)
    report.write_report(out_dir, results, setup.train.class_names)
    faults.point("task.before_metrics")
    # metrics.json marks the run finished, so it is written last.
    workdir_lib.write_json(os.path.join(out_dir, workdir_lib.METRICS_FILE), results)
  summary = {split: {k: None if results[split][k] is None else round(results[split][k], 4)
                     for k in ("accuracy", "balanced_accuracy", "macro_f1", "auc")}
             for split in config.evaluate.splits}
  log.info("metrics of the %s checkpoint (step %d): %s", which, meta["step"],
           json.dumps(summary))
  return results


def score_predictions(config, num_classes: int, predictions: dict, state=None, predict=None,
                      setup: Setup | None = None, groups: dict | None = None) -> dict:
  """Metrics per split of {split: (labels, probs)}, with the operating threshold and bootstrap.

  A binary threshold (evaluate.threshold youden | max_harmonic_mean) is chosen on val (predicted
  here with `predict` when val is not among evaluate.splits) and applied to every split; each
  split records it under `threshold` (None = argmax) and, with evaluate.bootstrap > 0, its
  95% intervals under `ci95`. A split whose source in `groups` ({split: source}) has groups also
  gets `groups`: per-group figures and the equity-scaled ES-M (metrics.group_metrics), by the
  source's group id (column 0 of its groups).
  """
  ev = config.evaluate
  method = ev.threshold
  threshold = None
  if method != "argmax":
    if num_classes != 2:
      log.warning("evaluate.threshold=%s applies to two classes only; the %d-class task uses "
                  "argmax", method, num_classes)
    else:
      if "val" not in predictions:
        val = open_source(config.data, "val", seed=config.seed)
        predictions["val"] = predict_split(predict, state, val, config.data,
                                           config.train.eval_batch_size, setup.mesh)
      threshold = report.select_threshold(*predictions["val"], method, ev.positive_class)
  out = {"evaluation": {"threshold_method": method if threshold is not None else "argmax",
                        "threshold_split": "val", "bootstrap": int(ev.bootstrap),
                        "seed": int(config.seed)}}
  for split in ev.splits:
    labels, probs = predictions[split]
    metrics = classification_metrics(labels, probs, num_classes,
                                     positive_class=ev.positive_class, threshold=threshold)
    metrics["threshold"] = threshold
    if groups and split in groups:
      source = groups[split]
      metrics["groups"] = group_metrics(labels, probs, group_ids(source), num_classes, ev.positive_class,
                                        threshold, getattr(source, "group_names", ()))
    if ev.bootstrap > 0:
      metrics["ci95"] = report.bootstrap_intervals(labels, probs, num_classes, ev.bootstrap,
                                                   config.seed, ev.positive_class, threshold)
    out[split] = metrics
  return out


def check_trained_run(config, workdir: str, overwrite: bool) -> tuple[str, dict]:
  """(run_dir, trained config) of `evaluate.run_dir`, checked against `config` and `workdir`."""
  run_dir = config.evaluate.run_dir or workdir
  trained_config = os.path.join(run_dir, workdir_lib.CONFIG_FILE)
  trained = config_lib.read_run_config(run_dir, "train_classifier", "evaluate.run_dir")
  check_same_model(config, trained, trained_config)
  metrics_path = os.path.join(workdir, workdir_lib.METRICS_FILE)
  if os.path.exists(metrics_path) and not overwrite:
    raise CheckpointError(f"{metrics_path} exists; pass --overwrite or choose another --workdir")
  os.makedirs(workdir, exist_ok=True)
  return run_dir, trained


def evaluate_single(config, workdir: str, overwrite: bool = False) -> dict:
  """Evaluates a trained single run (`evaluate.run_dir`, default the workdir) into `workdir`."""
  done = workdir_lib.finished_results(workdir, config, overwrite)
  if done is not None:
    return done
  run_dir, _ = check_trained_run(config, workdir, overwrite)
  which = config.evaluate.checkpoint
  if not config_lib.checkpoint_steps(run_dir, which):
    other = "latest" if which == "best" else "best"
    raise CheckpointError(f"no '{which}' checkpoint in "
                          f"{os.path.join(run_dir, 'checkpoints', which)}: train the run first, "
                          f"or set evaluate.checkpoint={other}")
  setup = build_setup(config)
  trained_classes = trained_class_count(run_dir)  # None when unfinished
  if trained_classes is not None and trained_classes != setup.num_classes:
    raise ConfigError(f"the run in {run_dir} was trained on {trained_classes} classes (its "
                      f"{workdir_lib.METRICS_FILE}) but this config's data ({setup.train.name}) "
                      f"has {setup.num_classes}: evaluate on data with the same classes "
                      "(data.source, data.path, data.num_classes)")
  # Written once every input is checked, so a refused evaluation leaves --workdir as it was.
  if os.path.abspath(run_dir) != os.path.abspath(workdir):
    workdir_lib.prepare(workdir, config, overwrite)  # its own config.json: reruns are no-ops
  tx = make_optimizer(config.train, learning_rate_schedule(
      config.train, setup.steps_per_epoch, setup.total_steps))
  state = init_state(setup.model, tx, setup.input_shape, config.seed, setup.mesh)
  checkpointer = Checkpointer(run_dir, config.train.keep_checkpoints, read_only=True)
  predict = make_predict_step(setup.model, config.train.ema_decay > 0, setup.mesh,
                              probabilities(config))
  try:
    return evaluate_checkpoint(config, setup, checkpointer, state, predict, workdir)
  finally:
    checkpointer.close()
