"""IOIS (Li et al. 2024, "Iterative Online Image Synthesis via Diffusion Model for Imbalanced
Classification") on the stage pipeline: recipe `online` (Algorithm 1) and its `offline` control.

`online`: generator (train_diffusion) -> baseline (train_classifier on the real data) -> online.
The online stage trains a classifier from scratch (the baseline's init: same seed and model) for
E = recipe.epochs epochs; epoch e (Algorithm 1):
  1. the current classifier predicts the real *training* split; its per-class accuracy gives the
     budgets k = Softmax(1 - acc)·K (eq. 5, AAS; recipe.aas=false: uniform, IOIS "+OIS"),
     K = recipe.budget (recipes/online.budgets_from_training: val and test are never read);
  2. k_c images of class c are drawn with classifier guidance from the current classifier,
     ε̂ = ε − s·∇ log p_φ(y|x) (eq. 4, s = recipe.guidance_scale), through one sampler
     compiled once: the classifier's variables are an argument, not a constant;
  3. the classifier trains one epoch (one pass) over real + pool (recipe.pool: `replace` = the
     newest set, `accumulate` = every set so far; recipes/online.pool).
The guiding classifier is the one being trained, on clean images (IOIS has no noise-aware
classifier); its gradient is taken at x_t (eq. 4 as written) or at the predicted x̂₀
(recipe.guidance_on=x0, which keeps a clean-image classifier on images it was trained on).
The denoiser is the class-conditional generator the diffusion task trains, given the class
(recipe.denoiser_label=class, default) or its learned null label (=null: unconditional, the
class coming from the guidance alone). No checkpoint is chosen on val (that would read val
during training): the last epoch's classifier is evaluated on val/test like a train_classifier
run (recipes/classifier.evaluate_checkpoint), which writes the stage's metrics.json last.

`offline` (control): generator -> baseline -> guided -> offline: one guided set drawn from the
fixed baseline classifier (its training-split accuracy gives the AAS budgets once), then an
ordinary train_classifier run on real + that set.

On disk (stage `online`): epochs/epoch-EEE/ holds that epoch's synthetic set (samples/, a sweep
directory), synthesis.json, checkpoints/ (the classifier state at the epoch's end) and
epoch.json (budgets, training per-class accuracy, pool size, synthesis seconds), written last.
A killed run resumes at the first unfinished epoch: every random draw comes from explicit keys
of (config.seed, stream, epoch), so the rerun's metrics equal an uninterrupted run's.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import shutil
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxsynth.data import augment, mixture, pipeline as data_pipeline, synthetic_format
from jaxsynth.data.sources import open_source
from jaxsynth.data.sources.synthetic import SyntheticSource
from jaxsynth.diffusion.samplers import GRAD_ON, ClassifierGuidance, SamplerConfig, make_sampler
from jaxsynth.errors import CheckpointError, ConfigError, DataError
from jaxsynth.models import convert
from jaxsynth.hardware import resolve_dtype
from jaxsynth.models.denoisers import DTYPES
from jaxsynth.recipes import classifier as classifier_lib
from jaxsynth.recipes import online
from jaxsynth.recipes.losses import make_loss, num_outputs, probabilities
from jaxsynth.recipes.pipeline import GENERATOR_FREE_KEYS, Pipeline, Stage
from jaxsynth.recipes.samplers import make_index_order
from jaxsynth.synthesis import generator as generator_lib
from jaxsynth.synthesis import sweep
from jaxsynth.training import parallel, workdir as workdir_lib
from jaxsynth.training.checkpoint import Checkpointer
from jaxsynth.training.loop import LoopSettings, StopRequest, train_loop
from jaxsynth.training.optim import learning_rate_schedule, make_optimizer
from jaxsynth.training.train_state import init_state
from jaxsynth.training.writers import MetricWriter

log = logging.getLogger(__name__)

EPOCHS_DIR = "epochs"
EPOCH_FILE = "epoch.json"          # an epoch is finished once this is written (last)
SYNTHESIS_FILE = "synthesis.json"  # budgets and timing of the epoch's synthesis
SUMMARY_FILE = "online.json"       # every epoch's record, beside metrics.json
SYNTH_STREAM = 3                   # fold_in tag of the synthesis root key (then the epoch)
DATA_STREAM = 4                    # SeedSequence tag of the per-epoch data order
DENOISER_LABELS = ("class", "null")
#: recipe.* keys of the IOIS recipes (configs/synthesis.py documents them).
KEYS = ("budget", "aas", "pool", "guidance_scale", "guidance_on", "denoiser_label", "epochs")
#: generator.sample.* keys the guided sweeps use.
SAMPLE_KEYS = ("checkpoint", "sampler", "num_steps", "eta", "spacing", "cfg_scale", "clip_x0",
               "dtype", "batch_size", "shard_size")
CLASSIFIER_CHECKPOINTS = 2         # epochs whose classifier state is kept (resume points)


# --------------------------------------------------------------------------- config

def _bad(key: str, value, fix: str) -> ConfigError:
  return ConfigError(f"config key '{key}' has bad value {value!r}: {fix}")


def check_recipe_config(config) -> None:
  """Raises ConfigError for a bad IOIS recipe key (recipe.budget < classes: aas_budgets')."""
  r, g = config.recipe, config.generator
  if g.get("latent") is not None:
    raise ConfigError("IOIS guides synthesis with the gradient of the classifier on the images; "
                      "a latent diffusion generator (generator.latent) would need the decoder "
                      "inside the guided sampler, which is not supported: use a pixel generator")
  if not isinstance(r.epochs, int) or r.epochs < 1:
    raise _bad("recipe.epochs", r.epochs, "use a whole number of epochs >= 1")
  if not isinstance(r.budget, int) or r.budget < 1:
    raise _bad("recipe.budget", r.budget, "use K >= the number of classes (synthetic images "
               "per epoch, IOIS eq. 5)")
  if not isinstance(r.aas, bool):
    raise _bad("recipe.aas", r.aas, "use true (Softmax(1 - acc)·K, eq. 5) or false (uniform)")
  online.pool_sizes([], r.pool)   # the pool mode's own check names recipe.pool
  if not (isinstance(r.guidance_scale, (int, float)) and math.isfinite(r.guidance_scale)
          and r.guidance_scale >= 0):
    raise _bad("recipe.guidance_scale", r.guidance_scale, "use s >= 0 (eq. 4; 0 = unguided)")
  if r.guidance_on not in GRAD_ON:
    raise _bad("recipe.guidance_on", r.guidance_on, f"use one of {', '.join(GRAD_ON)}")
  if r.denoiser_label not in DENOISER_LABELS:
    raise _bad("recipe.denoiser_label", r.denoiser_label,
               f"use one of {', '.join(DENOISER_LABELS)}")
  if g.diffusion.get("condition", "class") != "class":
    raise _bad("generator.diffusion.condition", g.diffusion.condition,
               "IOIS guides toward classes: use the class-conditional generator (class)")
  if r.denoiser_label == "null":
    if g.diffusion.label_dropout <= 0:
      raise _bad("recipe.denoiser_label", r.denoiser_label, "the null label is trained only "
                 "with generator.diffusion.label_dropout > 0; set it (e.g. 0.1) or use class")
    if g.sample.cfg_scale > 0:
      raise _bad("generator.sample.cfg_scale", g.sample.cfg_scale, "classifier-free guidance "
                 "needs the class label: set it to 0 with recipe.denoiser_label=null")
  if config.train.steps != 0:
    raise _bad("train.steps", config.train.steps, "the IOIS recipes count epochs (the online "
               "stage trains recipe.epochs passes over real + pool, and the baseline as many): "
               "set train.steps=0 and recipe.epochs")
  if r.classifier == "bce":
    raise _bad("recipe.classifier", r.classifier, "bce has one logit, but classifier guidance "
               "needs log p(y|x) over the classes: use ce or another multi-logit recipe")
  _check_sample_keys(g)
  # The budget against the class count, before anything is written (aas_budgets' own error).
  train = open_source(config.data, "train", seed=config.seed)
  online.aas_budgets(np.zeros(train.num_classes), r.budget, r.aas)


def _check_sample_keys(g) -> None:
  """Raises ConfigError for a bad generator.sample.* key of the guided sweeps (checked before
  the generator trains, not when the first epoch samples)."""
  s = g.sample
  for key, options in (("checkpoint", ("latest", "best")), ("dtype", ("",) + DTYPES)):
    if s[key] not in options:
      raise _bad(f"generator.sample.{key}", s[key], f"use one of {', '.join(map(repr, options))}")
  for key in ("batch_size", "shard_size", "num_steps"):
    if not (isinstance(s[key], int) and s[key] >= 1):
      raise _bad(f"generator.sample.{key}", s[key], "use a positive integer")
  options = generator_lib.sampler_options(
      sampler=s.sampler, num_steps=s.num_steps, cfg_scale=s.cfg_scale, eta=s.eta,
      spacing=s.spacing, clip_x0=s.clip_x0, num_classes=2, prediction=g.diffusion.prediction)
  try:
    SamplerConfig(**options).validate(int(g.diffusion.num_timesteps))
  except ConfigError as e:
    raise ConfigError(f"generator.sample: {e} (set it under generator.sample.*)") from None


def _online_block(config, generator_dir: str,
                  classifier_dir: str = "") -> ml_collections.ConfigDict:
  block = ml_collections.ConfigDict()
  for key in KEYS:
    block[key] = config.recipe[key]
  block.generator_dir = os.path.abspath(generator_dir)
  block.classifier_dir = os.path.abspath(classifier_dir) if classifier_dir else ""
  block.sample = ml_collections.ConfigDict({k: config.generator.sample[k] for k in SAMPLE_KEYS})
  return block


def epochs_matched(classifier_config):
  """`classifier_config` whose stages all train recipe.epochs epochs (train.epochs set from it),
  so the baseline, offline and online classifiers train as long as one another."""

  def make(config, synthetic_paths=()):
    out = classifier_config(config, synthetic_paths)
    out.train.epochs = float(config.recipe.epochs)
    return out

  return make


def online_stage_config(config, classifier_config, generator_dir: str):
  """The online stage's config: the recipe's classifier config (train_classifier keys), the
  last epoch evaluated (evaluate.checkpoint=latest), and `online`: the IOIS keys."""
  out = classifier_config(config)
  out.evaluate.checkpoint = "latest"
  out.online = _online_block(config, generator_dir)
  return out


def guided_stage_config(config, classifier_config, generator_dir: str, baseline_dir: str):
  """The offline control's `guided` stage config: one guided set from the baseline classifier."""
  out = classifier_config(config)
  out.online = _online_block(config, generator_dir, baseline_dir)
  return out


def _generator_and_baseline(config, tasks: dict):
  """(the recipe's classifier-config builder, its generator and baseline stages) after the IOIS
  keys are checked; every classifier stage trains recipe.epochs epochs."""
  from jaxsynth.recipes import synthesis  # pylint: disable=import-outside-toplevel  (registry)
  check_recipe_config(config)
  r = config.recipe
  classifier_config = epochs_matched(synthesis.classifier_config)
  return classifier_config, [
      Stage("generator", synthesis.generator_config(config), tasks["train_diffusion"],
            reuse=r.generator_workdir, reuse_key="recipe.generator_workdir",
            free_keys=GENERATOR_FREE_KEYS),
      Stage("baseline", classifier_config(config), tasks["train_classifier"],
            reuse=r.baseline_workdir, reuse_key="recipe.baseline_workdir"),
  ]


def online_pipeline(config, workdir: str, tasks: dict) -> Pipeline:
  """generator -> baseline -> online (IOIS Algorithm 1); the result stage is `online`."""
  classifier_config, stages = _generator_and_baseline(config, tasks)
  pipe = Pipeline(config.recipe.name, workdir, stages + [Stage("online", None, run_online)])
  pipe.stages["online"].config = online_stage_config(config, classifier_config,
                                                     pipe.dir("generator"))
  return pipe


def offline_pipeline(config, workdir: str, tasks: dict) -> Pipeline:
  """generator -> baseline -> guided (one set from the baseline) -> offline (real + that set)."""
  classifier_config, stages = _generator_and_baseline(config, tasks)
  pipe = Pipeline(config.recipe.name, workdir,
                  stages + [Stage("guided", None, run_guided),
                            Stage("offline", None, tasks["train_classifier"])])
  pipe.stages["guided"].config = guided_stage_config(
      config, classifier_config, pipe.dir("generator"), pipe.dir("baseline"))
  pipe.stages["offline"].config = classifier_config(
      config, (os.path.abspath(pipe.dir("guided")),))
  return pipe


# ------------------------------------------------------------------ guided synthesis

class GuidedSampler:
  """make_sampler's program with classifier guidance (IOIS eq. 4), compiled once: the
  classifier's variables are passed at each call, so a classifier in training guides it."""

  def __init__(self, gen: generator_lib.Generator, classifier_model, o, num_classes: int,
               mesh):
    d = gen.config.diffusion
    s = o.sample
    self.options = generator_lib.sampler_options(
        sampler=s.sampler, num_steps=s.num_steps, cfg_scale=s.cfg_scale,
        num_classes=num_classes, prediction=d.prediction, eta=s.eta, spacing=s.spacing,
        clip_x0=s.clip_x0)
    denoise = generator_lib.denoise_fn(gen.model)
    if o.denoiser_label == "null":   # unconditional: the learned null label, index C
      apply_fn = lambda p, x, t, labels: denoise(p, x, t, jnp.full_like(labels, num_classes))
    else:
      apply_fn = denoise
    self.traces = 0   # times the classifier was traced into a sampler program (compiles)

    def logits(variables, x):
      self.traces += 1   # Python side effect: runs at tracing only, never per call
      return classifier_model.apply(variables, x, train=False)

    self.guidance = ClassifierGuidance(logits, scale=float(o.guidance_scale),
                                       grad_on=o.guidance_on)
    self.fn = make_sampler(apply_fn, gen.schedule, gen.image_shape, classifier=self.guidance,
                           mesh=mesh, **self.options)

  def settings(self, o) -> dict:
    """The sampler and guidance settings a sweep's plan records."""
    return {**self.options, "guidance": {"scale": float(o.guidance_scale),
                                         "grad_on": o.guidance_on,
                                         "denoiser_label": o.denoiser_label}}

  def bound(self, variables):
    """sampler(params, labels, index, key) of run_sweep, guided by `variables`."""
    return lambda params, labels, index, key: self.fn(params, labels, index, key, variables)


def classifier_variables(state, use_ema: bool) -> dict:
  """The classifier's inference variables: (EMA) params and model state (batch statistics)."""
  return {"params": state.ema_params if use_ema else state.params, **state.model_state}


def synthesise(sampler: GuidedSampler, gen, variables, budgets, directory: str, config,
               root_key, provenance: dict, mesh, stop=None) -> dict:
  """Draws `budgets[c]` guided images of each class c into the sweep `directory`; returns
  {"seconds", "images_per_s", "drawn"}. A set started from other classifier weights is redrawn."""
  o = config.online
  plan = sweep.make_plan(np.asarray(budgets, np.int64), int(o.sample.shard_size))
  manifest = {
      "num_classes": int(len(budgets)), "image_shape": list(gen.image_shape),
      "class_names": list(gen.train.class_names), "counts": [int(k) for k in budgets],
      "total": int(np.sum(budgets)), "shard_size": plan.shard_size, "seed": int(config.seed),
      "run_dir": gen.run_dir,
      "checkpoint": {"which": o.sample.checkpoint, "step": gen.step, **provenance},
      "compute_dtype": resolve_dtype(o.sample.dtype or gen.config.model.dtype),
      "sampler": sampler.settings(o),
      "schedule": {"name": gen.config.diffusion.schedule,
                   "num_timesteps": int(gen.config.diffusion.num_timesteps)},
      "label_order": "interleaved",
  }
  try:
    sweep.check_same_plan(sweep.previous_plan(directory), manifest, directory)
  except DataError as e:
    log.warning("%s; drawing the set again", e)
    shutil.rmtree(directory, ignore_errors=True)
  complete = _complete_sweep(directory)
  mean, std = augment.normalisation(gen.config.data)
  start = time.time()
  result = sweep.run_sweep(sampler.bound(variables), gen.params, root_key, plan, directory,
                           batch_size=int(o.sample.batch_size), mesh=mesh, mean=mean, std=std,
                           manifest=manifest, stop=stop)
  return {"seconds": time.time() - start, "images_per_s": result.get("images_per_s"),
          "drawn": not complete}


def _complete_sweep(directory: str) -> bool:
  """Whether `directory` holds a finished sweep whose shards all match the manifest."""
  if not os.path.isfile(os.path.join(directory, synthetic_format.MANIFEST)):
    return False
  try:
    complete = bool(synthetic_format.read_manifest(directory).get("complete"))
  except DataError:
    return False
  return complete and not sweep.damage(directory)


# -------------------------------------------------------------------- the online stage

def _epoch_dir(directory: str, epoch: int) -> str:
  return os.path.join(directory, EPOCHS_DIR, f"epoch-{int(epoch):03d}")


def _samples(directory: str, epoch: int) -> str:
  return os.path.join(_epoch_dir(directory, epoch), "samples")


def _read_json(path: str) -> dict | None:
  try:
    with open(path, encoding="utf-8") as f:
      value = json.load(f)
  except (OSError, ValueError):
    return None
  return value if isinstance(value, dict) else None


def epoch_seed(seed: int, stream: int, epoch: int) -> int:
  """An int seed for host-side draws of (seed, stream, epoch), by SeedSequence (no arithmetic)."""
  return int(np.random.SeedSequence([int(seed), int(stream), int(epoch)]).generate_state(1)[0])


def epoch_steps(num_real: int, budget: int, epochs: int, mode: str, batch: int) -> list[int]:
  """Steps of each epoch: one pass over real + pool (every epoch's set has exactly K images)."""
  return [max(1, -(-(num_real + n) // batch))
          for n in online.pool_sizes([[budget]] * epochs, mode)]


def _finished_epochs(directory: str, epochs: int) -> list[dict]:
  """The records of epochs 1..e finished in order (epoch.json readable, set undamaged)."""
  done = []
  for e in range(1, epochs + 1):
    record = _read_json(os.path.join(_epoch_dir(directory, e), EPOCH_FILE))
    if record is None or not _complete_sweep(_samples(directory, e)):
      break
    done.append(record)
  return done


def _restore_epoch(directory: str, records: list[dict], template, keep: int):
  """(epochs done, state) from the newest finished epoch whose checkpoint restores, else
  (0, template): later epochs are then redone (deterministically)."""
  for record in reversed(records):
    e = record["epoch"]
    checkpoints = os.path.join(_epoch_dir(directory, e), "checkpoints")
    if not os.path.isdir(checkpoints):
      continue
    checkpointer = Checkpointer(_epoch_dir(directory, e), keep, read_only=True)
    try:
      state, _ = checkpointer.restore(template, "latest", record["end_step"])
      return e, state
    except CheckpointError as err:
      log.warning("epoch %d's classifier cannot be restored (%s); going back further", e, err)
    finally:
      checkpointer.close()
  return 0, template


def _discard_after(directory: str, epoch: int, epochs: int) -> None:
  """Removes what later epochs left (records; checkpoints beyond the next epoch's), so each
  is redone from `epoch`'s state; their synthetic sets stay, re-checked by their plans, and so
  does synthesis.json (rewritten; it keeps the time of a set that was already complete)."""
  if jax.process_index() != 0:   # one process edits the shared directory
    return
  for e in range(epoch + 1, epochs + 1):
    where = _epoch_dir(directory, e)
    if os.path.exists(os.path.join(where, EPOCH_FILE)):
      os.remove(os.path.join(where, EPOCH_FILE))
    if e > epoch + 1:
      shutil.rmtree(os.path.join(where, "checkpoints"), ignore_errors=True)


def _train_budgets(predict, state, train, config, num_classes: int, mesh):
  """(budgets, per-class accuracy) from predictions on the real training split only (eq. 5)."""
  labels, probs = classifier_lib.predict_split(predict, state, train, config.data,
                                               config.train.eval_batch_size, mesh)
  return online.budgets_from_training(labels, probs, num_classes, int(config.online.budget),
                                      bool(config.online.aas))


def _check_generator(gen, setup, key: str) -> None:
  if gen.conditioning.mode != "class" or gen.conditioning.num_conditions != setup.num_classes:
    raise ConfigError(f"config key '{key}': the generator in {gen.run_dir} is conditioned on "
                      f"{gen.conditioning.num_conditions} {gen.conditioning.mode} ids but the "
                      f"data has {setup.num_classes} classes: train it on this data")
  if tuple(gen.image_shape) != tuple(setup.input_shape):
    raise ConfigError(f"config key '{key}': the generator in {gen.run_dir} draws "
                      f"{gen.image_shape} images but the classifier sees {setup.input_shape}: "
                      "train it with the same data.image_size and data.channels")


def run_online(config, directory: str, stop: StopRequest | None = None) -> dict:
  """The online stage: IOIS Algorithm 1 for config.online.epochs epochs, then evaluation."""
  done = workdir_lib.finished_results(directory, config, overwrite=False)
  if done is not None:
    return done
  workdir_lib.check_prepare(directory, config, overwrite=False)
  o = config.online
  setup = classifier_lib.build_setup(config)      # the real train split only (no paths)
  train = setup.train
  num_classes, batch = setup.num_classes, int(config.train.batch_size)
  if num_outputs(config, num_classes) != num_classes:
    raise _bad("recipe.classifier", config.recipe.name, "classifier guidance needs one logit "
               "per class: use ce or another multi-logit recipe")
  online.aas_budgets(np.zeros(num_classes), int(o.budget), bool(o.aas))
  gen = generator_lib.load_generator(o.generator_dir, setup.mesh, o.sample.checkpoint,
                                     o.sample.dtype, key="generator.sample.checkpoint",
                                     run_key="recipe.generator_workdir")
  _check_generator(gen, setup, "recipe.generator_workdir")
  workdir_lib.prepare(directory, config, overwrite=False)

  steps = epoch_steps(len(train), int(o.budget), int(o.epochs), o.pool, batch)
  ends = np.cumsum(steps).tolist()
  lr = learning_rate_schedule(config.train, steps[0], int(ends[-1]))
  tx = make_optimizer(config.train, lr)
  pretrained = (functools.partial(convert.apply_pretrained, config.model)
                if config.model.pretrained else None)
  state = init_state(setup.model, tx, setup.input_shape, config.seed, setup.mesh,
                     pretrained=pretrained)
  keep = max(int(config.train.keep_checkpoints), 1)
  records = _finished_epochs(directory, int(o.epochs))
  first, state = _restore_epoch(directory, records, state, keep)
  records = records[:first]
  _discard_after(directory, first, int(o.epochs))
  print(f"jaxsynth: online: {first} of {o.epochs} epochs done", flush=True)

  use_ema = config.train.ema_decay > 0
  probs_fn = probabilities(config)
  predict = classifier_lib.make_predict_step(setup.model, use_ema, setup.mesh, probs_fn)
  step_fn = classifier_lib.make_train_step(
      setup.model, tx, make_loss(config, train.class_counts(), num_classes), lr,
      config.train.ema_decay, setup.mesh, probs_fn)
  sampler = GuidedSampler(gen, setup.model, o, num_classes, setup.mesh)
  root = jax.random.fold_in(jax.random.PRNGKey(config.seed), SYNTH_STREAM)
  writer = MetricWriter(directory, resume_step=int(jax.device_get(state.step)))
  checkpointer = None
  try:
    for e in range(first + 1, int(o.epochs) + 1):
      where = _epoch_dir(directory, e)
      start_step = int(ends[e - 2]) if e > 1 else 0
      # Algorithm 1, line by line: budgets from training accuracy (eq. 5), guided synthesis
      # from the current classifier (eq. 4), one epoch over real + pool.
      budgets, accuracy = _train_budgets(predict, state, train, config, num_classes,
                                         setup.mesh)
      variables = classifier_variables(state, use_ema)
      provenance = {"classifier_epoch": e - 1, "classifier_step": start_step,
                    "classifier_sha256": generator_lib.params_digest(variables)}
      timing = synthesise(sampler, gen, variables, budgets, _samples(directory, e), config,
                          jax.random.fold_in(root, e), provenance, setup.mesh, stop)
      previous = _read_json(os.path.join(where, SYNTHESIS_FILE))
      if not timing["drawn"] and previous is not None:
        timing = {k: previous[k] for k in ("seconds", "images_per_s")}
      synthesis = {"epoch": e, "budgets": budgets.tolist(),
                   "train_per_class_accuracy": accuracy.tolist(),
                   "seconds": float(timing["seconds"]),
                   "images_per_s": timing["images_per_s"], "sampler_traces": sampler.traces}
      if jax.process_index() == 0:
        workdir_lib.write_json(os.path.join(where, SYNTHESIS_FILE), synthesis)
      log.info("online epoch %d/%d: budgets %s (train accuracy %s), synthesis %.2f s",
               e, o.epochs, budgets.tolist(), np.round(accuracy, 3).tolist(),
               synthesis["seconds"])
      writer.scalars(start_step, {"online/synthesis_seconds": synthesis["seconds"],
                                  **{f"online/budget_{c}": float(k)
                                     for c, k in enumerate(budgets)}})

      sets = online.pool([_samples(directory, j) for j in range(1, e + 1)], o.pool)
      parts = [train]
      for path in sets:
        synthetic = SyntheticSource(path)
        mixture.check_synthetic(train, synthetic, config.data, path)
        parts.append(synthetic)
      mixed = mixture.ConcatSource(parts)
      if len(mixed) - len(train) != online.pool_sizes([[o.budget]] * e, o.pool)[-1]:
        raise DataError(f"epoch {e}'s pool in {where} holds {len(mixed) - len(train)} images, "
                        f"not the planned {online.pool_sizes([[o.budget]] * e, o.pool)[-1]}: "
                        "rerun the stage to redraw the damaged sets")
      checkpointer = Checkpointer(where, keep)
      state, meta = checkpointer.resume(state)
      resumed = int(jax.device_get(state.step))
      if not start_step <= resumed <= ends[e - 1]:
        raise CheckpointError(f"{where}/checkpoints holds step {resumed}, outside epoch {e}'s "
                              f"steps {start_step}..{ends[e - 1]}: remove that directory and "
                              "rerun")
      seed = epoch_seed(config.seed, DATA_STREAM, e)
      order_config = config.copy_and_resolve_references()
      order_config.seed = seed
      order = make_index_order(order_config, mixed.labels, num_classes, steps[e - 1],
                               steps[e - 1])
      dataset = data_pipeline.train_dataset(
          mixed, config.data, global_batch=batch, seed=seed, start_step=resumed - start_step,
          num_steps=steps[e - 1], process_index=jax.process_index(),
          process_count=jax.process_count(), index_order=order)
      big = int(ends[-1]) + 1    # checkpoints at the epoch's end (and on a stop request) only
      settings = LoopSettings(total_steps=int(ends[e - 1]), log_every=config.train.log_every,
                              eval_every=big, checkpoint_every=big)
      meta = {**meta, "epoch": e, "epoch_start": start_step}
      state, meta = train_loop(state, step_fn, parallel.global_batches(dataset, setup.mesh),
                               settings, checkpointer, writer, None, meta, stop)
      record = {**synthesis, "start_step": start_step, "end_step": int(ends[e - 1]),
                "steps": steps[e - 1], "real_size": len(train),
                "pool_size": len(mixed) - len(train), "pool": [os.path.relpath(p, directory)
                                                              for p in sets],
                "mixture": mixture.counts(mixed),
                "train_loss": (meta.get("train") or {}).get("loss")}
      if e < int(o.epochs):
        checkpointer.close()
        checkpointer = None
      if jax.process_index() == 0:
        workdir_lib.write_json(os.path.join(where, EPOCH_FILE), record)
        old = e - CLASSIFIER_CHECKPOINTS
        if old >= 1:   # an older epoch's state is no longer a resume point
          shutil.rmtree(os.path.join(_epoch_dir(directory, old), "checkpoints"),
                        ignore_errors=True)
      records.append(record)

    if checkpointer is None:   # every epoch was done already: the last one's checkpoint
      checkpointer = Checkpointer(_epoch_dir(directory, int(o.epochs)), keep)
    summary = {k: [r[k] for r in records]
               for k in ("budgets", "train_per_class_accuracy", "pool_size", "steps")}
    if jax.process_index() == 0:
      workdir_lib.write_json(os.path.join(directory, SUMMARY_FILE),
                             {"epochs": records, "synthesis_seconds":
                              [r["seconds"] for r in records]})
    return classifier_lib.evaluate_checkpoint(config, setup, checkpointer, state, predict,
                                              directory, {"online": summary})
  finally:
    writer.close()
    if checkpointer is not None:
      checkpointer.close()


# ------------------------------------------------------------- the offline control

def run_guided(config, directory: str, stop: StopRequest | None = None) -> dict:
  """The offline control's one guided set: AAS budgets from the baseline classifier's
  training-split accuracy, guided by it (eq. 4), drawn into DIR/samples."""
  done = workdir_lib.finished_results(directory, config, overwrite=False)
  if done is not None:
    return done
  workdir_lib.check_prepare(directory, config, overwrite=False)
  o = config.online
  setup = classifier_lib.build_setup(config)
  online.aas_budgets(np.zeros(setup.num_classes), int(o.budget), bool(o.aas))
  gen = generator_lib.load_generator(o.generator_dir, setup.mesh, o.sample.checkpoint,
                                     o.sample.dtype, key="generator.sample.checkpoint",
                                     run_key="recipe.generator_workdir")
  _check_generator(gen, setup, "recipe.generator_workdir")
  which = config.evaluate.checkpoint
  _, _, step, state = classifier_lib.run_variables(config, setup, o.classifier_dir, which)
  meta = {"step": step}
  workdir_lib.prepare(directory, config, overwrite=False)
  use_ema = config.train.ema_decay > 0
  predict = classifier_lib.make_predict_step(setup.model, use_ema, setup.mesh,
                                             probabilities(config))
  budgets, accuracy = _train_budgets(predict, state, setup.train, config, setup.num_classes,
                                     setup.mesh)
  variables = classifier_variables(state, use_ema)
  sampler = GuidedSampler(gen, setup.model, o, setup.num_classes, setup.mesh)
  root = jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(config.seed), SYNTH_STREAM), 0)
  provenance = {"classifier_dir": o.classifier_dir, "classifier_step": int(meta["step"]),
                "classifier_sha256": generator_lib.params_digest(variables)}
  timing = synthesise(sampler, gen, variables, budgets,
                      os.path.join(directory, "samples"), config, root, provenance,
                      setup.mesh, stop)
  metrics = {"samples": int(budgets.sum()), "counts": budgets.tolist(),
             "train_per_class_accuracy": accuracy.tolist(),
             "classifier": {"which": which, "step": int(meta["step"])},
             "synthesis_seconds": float(timing["seconds"])}
  if jax.process_index() == 0:   # metrics.json marks the stage finished: written last
    workdir_lib.write_json(os.path.join(directory, workdir_lib.METRICS_FILE), metrics)
  return metrics


def report_sections(pipe: Pipeline, results: dict) -> list[str]:
  """report.md lines of the online stage: each epoch's budgets, pool and synthesis time."""
  del results
  summary = _read_json(os.path.join(pipe.dir("online"), SUMMARY_FILE))
  if not summary:
    return []
  lines = ["", "## Online synthesis (IOIS Algorithm 1)", "",
           "| epoch | train balanced accuracy | budgets k_c (eq. 5) | pool |",
           "|---|---|---|---|"]
  for r in summary["epochs"]:
    acc = float(np.mean(r["train_per_class_accuracy"]))
    lines.append(f"| {r['epoch']} | {acc:.4f} | {' '.join(str(k) for k in r['budgets'])} | "
                 f"{r['pool_size']} |")
  # wall-clock times stay out of the tables, which a resumed run reproduces exactly
  lines += ["", "Synthesis time per epoch (s): "
            + ", ".join(f"{r['seconds']:.2f}" for r in summary["epochs"])]
  return lines
