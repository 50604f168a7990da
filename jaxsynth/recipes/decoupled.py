"""Decoupled two-stage training (Kang et al. 2020, "Decoupling representation and classifier").

Stage 1 is a plain `ce` run with instance-balanced sampling into WORKDIR/stage1 (its own
config.json, log.jsonl, checkpoints/ and metrics.json). Stage 2 starts from stage 1's
`evaluate.checkpoint` (default best) and runs in WORKDIR/stage2 with class-balanced sampling;
its best checkpoint gives WORKDIR's metrics.json, predictions.npz, metrics.md, evaluation.png.

  crt                 classifier re-training: the head is re-initialised and trained on frozen
                      features (backbone params and BatchNorm statistics unchanged, BatchNorm in
                      eval mode).
  lws                 learnable weight scaling: backbone and head frozen; a per-class scale f_i
                      is learnt, w~_i = f_i w_i (Kang et al. Sec. 4; here the scale multiplies
                      the logit w_i.x + b_i, so the bias scales too).
  tau_norm            no training: w~_i = w_i / ||w_i||^tau (Kang et al. Sec. 4, tau-normalised
                      classifier; the bias is kept, so tau = 0 is the stage-1 head), tau picked
                      from recipe.tau_grid by train.select_metric on val.
  multistage_sampler  DiffuPT's "multi-stage + sampler" baseline: the whole network fine-tuned
                      with the class-balanced sampler at a lower rate (BatchNorm trains).

With recipe.stage1_workdir=DIR, stage 1 is not trained: DIR must hold a finished `ce` run (or a
decoupled run's stage1/) trained with this config's seed, model, data and train keys (checked
against DIR/config.json; train.log_every and train.keep_checkpoints may differ), and its
`evaluate.checkpoint` is read from DIR, which is never written to nor removed (--overwrite
included). So cRT, LWS and tau-norm can sit on one existing CE baseline.

Frozen parameters get no gradient and are passed through the step untouched (see
classifier.make_train_step's `trainable`), and the optimiser only sees the trainable ones
(optax.multi_transform), so they stay bit-identical. The two stages run on the stage pipeline
(recipes/pipeline.py): stage 1 is a plain `ce` run (`stage1_config`) skipped when stage1/ holds it
finished; stage 2 resumes from its latest checkpoint (a finished one goes straight to
evaluation) and is complete when WORKDIR/metrics.json is written.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import shutil

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxsynth import config as config_lib
from jaxsynth.data.sources import open_source
from jaxsynth.errors import ConfigError
from jaxsynth.metrics.classification import classification_metrics
from jaxsynth.recipes.losses import probabilities
from jaxsynth.recipes.samplers import class_balanced_order
from jaxsynth.recipes import classifier
from jaxsynth.recipes import pipeline as pipeline_lib
from jaxsynth.recipes.pipeline import Pipeline, Stage
from jaxsynth.training import parallel, train_state, workdir as workdir_lib
from jaxsynth.training.checkpoint import Checkpointer
from jaxsynth.training.loop import StopRequest
from jaxsynth.training.optim import learning_rate_schedule, make_optimizer

log = logging.getLogger(__name__)

RECIPES = ("crt", "lws", "tau_norm", "multistage_sampler")
STAGE1, STAGE2 = "stage1", "stage2"
STAGE2_SCHEDULES = ("constant", "cosine")
# train keys that change neither stage 1's weights nor its chosen checkpoint: an external stage 1
# (recipe.stage1_workdir) may differ from this config in these only.
STAGE1_FREE_TRAIN_KEYS = ("log_every", "keep_checkpoints")


class FrozenFeatures(nn.Module):
  """The stage-1 classifier under `base`, BatchNorm always in eval mode; LWS scales its logits."""
  base: nn.Module
  scaled: bool = False

  @nn.compact
  def __call__(self, x, train: bool = False):
    del train  # frozen features: BatchNorm uses its running statistics in training too
    logits = self.base(x, train=False)
    if self.scaled:
      # LWS (Kang et al. 2020, Sec. 4): f_i (w_i . x + b_i), f initialised to 1.
      logits = logits * self.param("scale", nn.initializers.ones, (logits.shape[-1],))
    return logits


# -------------------------------------------------------------------------- config


def check_options(config) -> None:
  """Raises ConfigError naming the first bad `recipe.stage2_*` / `recipe.tau_grid` value."""
  r = config.recipe
  if r.name not in RECIPES:
    raise ConfigError(f"config key 'recipe.name' has value {r.name!r}, not a decoupled recipe; "
                      f"use one of {', '.join(RECIPES)}")
  if r.name == "tau_norm":
    grid = tuple(r.tau_grid)
    if not grid or not all(math.isfinite(float(t)) for t in grid):
      raise ConfigError(f"config key 'recipe.tau_grid' has bad value {grid!r}: give finite "
                        "values, e.g. '(0.0, 0.5, 1.0)'")
    return
  syn = config.data.synthetic
  if syn.paths and syn.mix == "fraction":
    # stage 2 re-samples the whole training set class-balanced, which has no per-batch fraction
    raise ConfigError(f"config key 'data.synthetic.mix' = 'fraction' does not fit recipe.name="
                      f"{r.name}: its stage 2 samples real + synthetic class-balanced as one set; "
                      "use data.synthetic.mix=count")
  if not (r.stage2_steps > 0 or r.stage2_epochs > 0):
    raise ConfigError(f"config key 'recipe.stage2_epochs' has bad value {r.stage2_epochs!r}: set "
                      "recipe.stage2_epochs > 0 or recipe.stage2_steps > 0")
  if not (r.stage2_learning_rate >= 0 and math.isfinite(r.stage2_learning_rate)):
    raise ConfigError(f"config key 'recipe.stage2_learning_rate' has bad value "
                      f"{r.stage2_learning_rate!r}: use 0 (= train.learning_rate) or a positive "
                      "rate")
  if r.stage2_schedule not in STAGE2_SCHEDULES:
    raise ConfigError(f"config key 'recipe.stage2_schedule' has bad value {r.stage2_schedule!r}; "
                      f"use one of {', '.join(STAGE2_SCHEDULES)}")


def _stage1_keys(resolved: dict) -> dict:
  """The parts of a resolved config (as config.json holds it) that fix stage 1's weights."""
  out = {k: resolved[k] for k in ("seed", "model", "data") if k in resolved}
  out["train"] = {k: v for k, v in resolved.get("train", {}).items()
                  if k not in STAGE1_FREE_TRAIN_KEYS}
  return out


def external_stage1(config, workdir: str) -> str | None:
  """`recipe.stage1_workdir` checked as a finished stage 1 of `config`; None when it is unset.

  Raises ConfigError when the directory overlaps `workdir`, is not a finished `ce` (or decoupled
  stage-1) run, or was trained with other seed/model/data/train keys (listed in the message).
  """
  directory = config.recipe.stage1_workdir
  if not directory:
    return None
  key = "config key 'recipe.stage1_workdir'"
  here, there = os.path.realpath(workdir), os.path.realpath(directory)
  if os.path.commonpath([here, there]) in (here, there):
    raise ConfigError(f"{key}: {directory} and --workdir {workdir} contain one another, but "
                      "stage 1 is read only: use separate directories, e.g. runs/ce and runs/crt")
  for name in (workdir_lib.METRICS_FILE, workdir_lib.CONFIG_FILE):
    if not os.path.isfile(os.path.join(directory, name)):
      raise ConfigError(f"{key}: {directory} has no {name}, so it is no finished run; finish the "
                        "ce run there (run its command again) or give a finished run's workdir")
  config_path = os.path.join(directory, workdir_lib.CONFIG_FILE)
  with open(config_path, encoding="utf-8") as f:
    trained = json.load(f)
  recipe = trained.get("recipe", {}).get("name", "ce")
  if recipe != "ce" and recipe not in RECIPES:
    raise ConfigError(f"{key}: {directory} holds a {recipe!r} run ({config_path}), but stage 1 "
                      "is ce; give a ce run's workdir, or leave the key empty to train stage 1")
  if recipe in RECIPES and os.path.isdir(os.path.join(directory, STAGE1)):
    raise ConfigError(f"{key}: {directory} is a decoupled run's workdir; give its stage-1 "
                      f"directory {os.path.join(directory, STAGE1)}")
  # Compared as config.json stores them, as the resume check does.
  changes = workdir_lib.config_diff(_stage1_keys(trained),
                              _stage1_keys(json.loads(config_lib.to_json(config))))
  if changes:
    shown = "; ".join(changes[:8]) + (f"; and {len(changes) - 8} more" if len(changes) > 8 else "")
    raise ConfigError(f"{key}: the run in {directory} was trained with other keys (its value -> "
                      f"this config's: {shown}); pass the same keys, or leave the key empty to "
                      "train stage 1")
  for which in ("latest", "best"):
    if not os.path.isdir(os.path.join(directory, "checkpoints", which)):
      raise ConfigError(f"{key}: {directory} has no checkpoints/{which}, so it is no classifier "
                        "run; give a finished ce run's workdir")
  return directory


def stage2_config(config):
  """A copy of `config` whose `train` keys describe stage 2 (length, rate, schedule)."""
  r = config.recipe
  out = config.copy_and_resolve_references()
  out.train.learning_rate = float(r.stage2_learning_rate or config.train.learning_rate)
  out.train.epochs = float(r.stage2_epochs)
  out.train.steps = int(r.stage2_steps)
  out.train.schedule = r.stage2_schedule
  out.train.warmup_epochs = 0.0
  out.train.decay_epochs = ()
  return out


# ------------------------------------------------------------------- stage-2 pieces


def stage2_model(recipe: str, base: nn.Module) -> nn.Module:
  """The model stage 2 trains: frozen features for crt/lws, the stage-1 model otherwise."""
  if recipe in ("crt", "lws"):
    return FrozenFeatures(base, scaled=recipe == "lws")
  return base


def trainable_mask(recipe: str, params):
  """Pytree of bools, True where stage 2 trains (None: everything trains)."""
  if recipe == "crt":
    return jax.tree_util.tree_map_with_path(
        lambda path, _: len(path) > 1 and path[1].key == "head", params)
  if recipe == "lws":
    return jax.tree_util.tree_map_with_path(lambda path, _: path[0].key == "scale", params)
  return None


def frozen_optimizer(tx: optax.GradientTransformation, trainable) -> optax.GradientTransformation:
  """`tx` on the trainable leaves only; the frozen ones get zero updates and no optimiser state."""
  if trainable is None:
    return tx
  labels = jax.tree.map(lambda t: "train" if t else "freeze", trainable)
  return optax.multi_transform({"train": tx, "freeze": optax.set_to_zero()}, labels)


def stage2_variables(recipe: str, base_params, base_model_state, seed: int):
  """Stage 2's (params, model_state) from stage 1's; cRT re-initialises the head."""
  num_outputs = int(base_params["head"]["kernel"].shape[-1])
  base_params = dict(base_params)
  if recipe == "crt":
    # Key: fold_in(root(seed), 2) for stage 2. Same initialisers as the model's head (nn.Dense:
    # LeCun normal kernel, zero bias).
    head_key = jax.random.fold_in(jax.random.PRNGKey(seed), 2)
    in_features = base_params["head"]["kernel"].shape[0]
    base_params["head"] = nn.Dense(num_outputs).init(
        head_key, jnp.zeros((1, in_features), jnp.float32))["params"]
  if recipe not in ("crt", "lws"):
    return base_params, dict(base_model_state)
  params = {"base": base_params}
  if recipe == "lws":
    params["scale"] = jnp.ones((num_outputs,), jnp.float32)
  return params, {col: {"base": v} for col, v in base_model_state.items()}


def initial_stage2(config2, setup2, base_params, base_model_state, schedule):
  """(state, tx, trainable) of stage 2 at step 0, replicated over the mesh."""
  recipe = config2.recipe.name
  params, model_state = stage2_variables(recipe, base_params, base_model_state, config2.seed)
  trainable = trainable_mask(recipe, params)
  tx = frozen_optimizer(make_optimizer(config2.train, schedule), trainable)
  # The state's step key: fold_in(root(seed), 2), split off from the head's.
  state_key = jax.random.split(jax.random.fold_in(jax.random.PRNGKey(config2.seed), 2))[1]

  def create(params, model_state):
    return train_state.create(params, model_state, tx, state_key)

  state = jax.jit(create, out_shardings=parallel.replicated(setup2.mesh))(params, model_state)
  return state, tx, trainable


def _stage1_model_params(config, setup: classifier.Setup, directory: str):
  """(params, model_state, step, state) of stage 1's `evaluate.checkpoint` (params: EMA if on)."""
  return classifier.run_variables(config, setup, directory, config.evaluate.checkpoint)


# -------------------------------------------------------------------------- stages


def stage1_config(config):
  """Stage 1's config: `config` as a plain `ce` run (decoupled recipe keys at their defaults),
  so any finished `ce` run with the same seed, model, data and train keys is a stage 1."""
  out = config.copy_and_resolve_references()
  out.task = "train_classifier"
  out.recipe = config_lib.base_config("train_classifier").recipe
  return out


def pipeline(config, workdir: str) -> Pipeline:
  """The two stages of a decoupled recipe: stage1 (trained, or recipe.stage1_workdir reused) and
  stage2, whose metrics go to `workdir` itself."""
  external = config.recipe.stage1_workdir

  def run_stage2(config2, directory, stop=None):
    del config2
    return _run_stage2(config, workdir, directory, pipe.dir(STAGE1), stop)

  stage1 = Stage(STAGE1, stage1_config(config), classifier.train_single, reuse=external,
                 check_reuse=lambda _: external_stage1(config, workdir),
                 reuse_key="recipe.stage1_workdir")
  stage2 = Stage(STAGE2, config, run_stage2,
                 complete=lambda: pipeline_lib.finished(workdir, config))
  pipe = Pipeline(config.recipe.name, workdir, [stage1, stage2])
  return pipe


def train_and_evaluate(config, workdir: str, overwrite: bool = False,
                       stop: StopRequest | None = None) -> dict:
  """Runs stage 1 (skipped when finished), then stage 2; evaluates stage 2 into `workdir`."""
  check_options(config)
  done = workdir_lib.finished_results(workdir, config, overwrite)
  if done is not None:
    return done
  external_stage1(config, workdir)  # outside `workdir`: --overwrite cannot reach it
  workdir_lib.check_prepare(workdir, config, overwrite)
  if overwrite and jax.process_index() == 0:
    for name in (STAGE1, STAGE2):
      shutil.rmtree(os.path.join(workdir, name), ignore_errors=True)
  workdir_lib.prepare(workdir, config, overwrite)
  return pipeline(config, workdir).run(stop)[STAGE2]


def _run_stage2(config, workdir: str, stage2_dir: str, stage1_dir: str,
                stop: StopRequest | None) -> dict:
  """Stage 2 from stage 1's chosen checkpoint (tau_norm: the tau search), into `workdir`."""
  setup = classifier.build_setup(config)
  params, model_state, stage1_step, stage1_state = _stage1_model_params(config, setup,
                                                                         stage1_dir)
  external = config.recipe.stage1_workdir
  extra = {"stages": {"stage1": {"dir": os.path.abspath(external) if external else STAGE1,
                                 "checkpoint": config.evaluate.checkpoint,
                                 "step": stage1_step},
                      "stage2": {"dir": STAGE2}}}
  if config.recipe.name == "tau_norm":
    return _tau_norm(config, setup, stage1_state, params, stage2_dir, workdir, extra)
  config2 = stage2_config(config)
  setup2 = _stage2_setup(config2, setup)
  schedule = learning_rate_schedule(config2.train, setup2.steps_per_epoch, setup2.total_steps)
  state, tx, trainable = initial_stage2(config2, setup2, params, model_state, schedule)
  order = class_balanced_order(setup.train.labels, setup.num_classes, config.seed,
                               setup2.steps_per_epoch * config.train.batch_size)
  plan = classifier.Plan(state, tx, schedule, order, trainable)
  log.info("stage 2 of %s: %d steps, class-balanced, rate %g, into %s", config.recipe.name,
           setup2.total_steps, config2.train.learning_rate, stage2_dir)
  return classifier.train_plan(config2, setup2, plan, stage2_dir, out_dir=workdir, stop=stop,
                               extra=extra)


def _stage2_setup(config2, setup: classifier.Setup) -> classifier.Setup:
  total = (config2.train.steps if config2.train.steps > 0
           else max(1, int(round(config2.train.epochs * setup.steps_per_epoch))))
  return dataclasses.replace(setup, model=stage2_model(config2.recipe.name, setup.model),
                             total_steps=total)


# ---------------------------------------------------------------------- tau-norm


def tau_normalise(head: dict, tau: float) -> dict:
  """Head params with kernel columns w_i / ||w_i||^tau (Kang et al. 2020, Sec. 4); bias kept."""
  kernel = jnp.asarray(head["kernel"])  # (features, classes): column i is w_i
  norms = jnp.linalg.norm(kernel, axis=0)
  scale = jnp.where(norms > 0, norms ** tau, 1.0).astype(kernel.dtype)
  out = dict(head)
  out["kernel"] = kernel / scale
  return out


def select_tau(config, features, labels, head: dict, num_classes: int):
  """(tau, {tau: val metric}) maximising train.select_metric over recipe.tau_grid; first wins."""
  probs_fn = probabilities(config)
  metric, mode = config.train.select_metric, config.train.select_mode
  scores, best = {}, None
  for tau in config.recipe.tau_grid:
    h = tau_normalise(head, float(tau))
    logits = jnp.asarray(features) @ h["kernel"] + h["bias"]
    probs = np.asarray(probs_fn(logits))
    value = classification_metrics(labels, probs, num_classes,
                                   positive_class=config.evaluate.positive_class)[metric]
    scores[float(tau)] = value
    if value is not None and np.isfinite(value) and (
        best is None or (value > scores[best] if mode == "max" else value < scores[best])):
      best = float(tau)
  if best is None:
    raise ConfigError(f"tau_norm: train.select_metric={metric!r} is undefined on val for every "
                      "tau in recipe.tau_grid; choose another select metric")
  return best, scores


def _tau_norm(config, setup, stage1_state, params, directory: str, out_dir: str,
              extra: dict) -> dict:
  predict = classifier.make_predict_step(setup.model, config.train.ema_decay > 0, setup.mesh,
                                         probabilities(config))
  checkpointer = Checkpointer(directory, config.train.keep_checkpoints)
  try:
    if checkpointer.latest_step("best") is None:
      model = setup.model

      def features_fn(state, images):
        p = state.ema_params if config.train.ema_decay > 0 else state.params
        _, feats = model.apply({"params": p, **state.model_state}, images, train=False,
                               return_features=True)
        return feats

      features = jax.jit(features_fn, in_shardings=(parallel.replicated(setup.mesh),
                                                    parallel.batch_sharding(setup.mesh)),
                         out_shardings=parallel.batch_sharding(setup.mesh))
      val = open_source(config.data, "val", seed=config.seed)
      labels, feats = classifier.predict_split(features, stage1_state, val, config.data,
                                               config.train.eval_batch_size, setup.mesh)
      tau, scores = select_tau(config, feats, labels, params["head"], setup.num_classes)
      log.info("tau_norm: tau = %g by val %s (%s)", tau, config.train.select_metric, scores)
      new_params = dict(params)
      new_params["head"] = tau_normalise(params["head"], tau)
      state = stage1_state.replace(step=jnp.zeros((), jnp.int32), params=new_params,
                                   ema_params=new_params)
      state = jax.device_put(state, parallel.replicated(setup.mesh))
      meta = {"step": 0, "tau": tau, "best_value": scores[tau],
              "tau_scores": {str(k): v for k, v in scores.items()}}
      for which in ("latest", "best"):
        checkpointer.save(0, state, meta, which)
      checkpointer.wait()
    _, meta = checkpointer.restore(stage1_state, "best")
    extra = dict(extra, tau_norm={"tau": meta["tau"], "select_metric":
                                  config.train.select_metric, "val": meta["tau_scores"]})
    config2 = config.copy_and_resolve_references()
    config2.evaluate.checkpoint = "best"
    return classifier.evaluate_checkpoint(config2, setup, checkpointer, stage1_state, predict,
                                           out_dir, extra)
  finally:
    checkpointer.close()


# ------------------------------------------------------------------------ evaluate


def evaluate(config, workdir: str, overwrite: bool = False) -> dict:
  """The `evaluate` task for a decoupled run: its stage-2 checkpoint into `workdir`."""
  check_options(config)
  done = workdir_lib.finished_results(workdir, config, overwrite)
  if done is not None:
    return done
  run_dir, trained = classifier.check_trained_run(config, workdir, overwrite)
  trained_recipe = trained.get("recipe", {}).get("name", "ce")
  if trained_recipe != config.recipe.name:
    raise ConfigError(f"config 'recipe.name' {config.recipe.name!r} differs from the trained "
                      f"run's {trained_recipe!r} in {run_dir}; decoupled recipes give different "
                      f"models: pass --config.recipe.name={trained_recipe}")
  setup = classifier.build_setup(config)
  plan = classifier.plan_training(config, setup)  # a template of the saved shapes
  checkpointer = Checkpointer(os.path.join(run_dir, STAGE2), config.train.keep_checkpoints,
                              read_only=True)
  try:
    if config.recipe.name == "tau_norm":
      config2, setup2, template = config.copy_and_resolve_references(), setup, plan.state
      config2.evaluate.checkpoint = "best"
    else:
      config2 = stage2_config(config)
      setup2 = _stage2_setup(config2, setup)
      schedule = learning_rate_schedule(config2.train, setup2.steps_per_epoch,
                                        setup2.total_steps)
      template = initial_stage2(config2, setup2, plan.state.params, plan.state.model_state,
                                schedule)[0]
    predict = classifier.make_predict_step(setup2.model, config.train.ema_decay > 0,
                                           setup2.mesh, probabilities(config))
    return classifier.evaluate_checkpoint(config2, setup2, checkpointer, template, predict,
                                           workdir)
  finally:
    checkpointer.close()
