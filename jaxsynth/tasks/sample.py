"""Task `sample`: a sampling sweep from a `train_diffusion` run's EMA parameters into
WORKDIR/samples (shards + manifest.json, read by `data.source=synthetic`); or from a
`train_gan` run's generator (synthesis/gan_generator.py: one forward per image; the sampler
keys sample.sampler, num_steps, eta, spacing, cfg_scale and clip_x0 do not apply to it).

The model, data (class count, names, train counts, image size, normalisation), conditioning
(`diffusion.condition`) and noise schedule come from the trained run's config.json
(`sample.run_dir`); this task's own config supplies `seed` (sample i uses
fold_in(PRNGKey(seed), i)), `mesh` and the `sample.*` keys.

A group-conditioned run's sweep (data/conditions.py) writes `groups` in every shard: for
`class_group` the budget is per (class, group) cell (`sample.cell_counts`, class-major, or
balance over the train split's cells), labels the class; for `group` it is per group
(`sample.group_counts` or balance), every label is 0 and the manifest says num_classes 1 (the
samples have no class). The manifest records `condition`, `num_groups` and `group_names`.
"""

from __future__ import annotations

import json
import logging
import os

import jax
import ml_collections
import numpy as np

from jaxsynth import config as config_lib
from jaxsynth.data import augment, conditions, pipeline, synthetic_format
from jaxsynth.data.sources import open_source
from jaxsynth.diffusion.samplers import SAMPLERS, SPACINGS, make_sampler
from jaxsynth.diffusion.schedules import make_schedule
from jaxsynth.errors import ConfigError, DataError
from jaxsynth.hardware import resolve_dtype
from jaxsynth.models.denoisers import DTYPES, make_denoiser
from jaxsynth.synthesis import filters, latents, sweep
from jaxsynth.synthesis.gan_generator import (GAN_TASK, check_translation_budget,
                                              is_cyclegan_run, is_gan_run, load_gan)
from jaxsynth.synthesis.generator import load_ema_params, load_run_config
from jaxsynth.tasks import diffusion
from jaxsynth.training import parallel, workdir as workdir_lib
from jaxsynth.training.loop import StopRequest

log = logging.getLogger(__name__)


def _bad(key: str, value, fix: str) -> ConfigError:
  return ConfigError(f"config key 'sample.{key}' has bad value {value!r}: {fix}")


def check_config(config, workdir: str) -> None:
  """Raises ConfigError for a bad `sample.*` key (budgets are checked against the data later)."""
  s = config.sample
  if not s.run_dir:
    raise _bad("run_dir", s.run_dir, "set --config.sample.run_dir to a train_diffusion or "
               "train_gan workdir")
  if os.path.abspath(s.run_dir) == os.path.abspath(workdir or "."):
    raise _bad("run_dir", s.run_dir, "the sweep needs its own --workdir, not the trained run's")
  for key, options in (("checkpoint", ("latest", "best")), ("budget", sweep.BUDGETS),
                       ("sampler", SAMPLERS), ("spacing", SPACINGS)):
    if s[key] not in options:
      raise _bad(key, s[key], f"use one of {', '.join(options)}")
  for key in ("shard_size", "batch_size", "num_steps"):
    if s[key] < 1:
      raise _bad(key, s[key], "use a positive integer")
  if s.dtype not in ("",) + DTYPES:
    raise _bad("dtype", s.dtype, f"use '' (the trained run's) or one of {', '.join(DTYPES)}")
  if s.cfg_scale < 0 or s.eta < 0 or s.clip_x0 < 0:
    raise _bad("cfg_scale", (s.cfg_scale, s.eta, s.clip_x0),
               "cfg_scale, eta and clip_x0 must be >= 0 (0 = off)")
  filters.check_filter_config(s.filter, "sample.filter")
  if not 1 <= s.max_attempts <= 1000:
    raise _bad("max_attempts", s.max_attempts, "use a number in [1, 1000] (attempts per class, "
               "as a multiple of its budget)")


def sweep_budget(config, run, train) -> tuple[conditions.Conditioning, np.ndarray]:
  """The trained run's conditioning over its `train` split, and the samples per condition id."""
  mode = run.diffusion.get("condition", "class") if "diffusion" in run else "class"
  try:
    conditioning = conditions.from_source(mode, train)
  except ConfigError as e:
    raise DataError(f"the trained run {config.sample.run_dir} is conditioned on {mode!r} "
                    f"(its diffusion.condition) but its data does not fit ({e}); restore the "
                    "files the run was trained on") from None
  name = config.sample.filter.name
  if conditioning.mode == "group" and name in ("classifier", "realism_class"):
    raise ConfigError(f"config key 'sample.filter.name' = {name!r} judges a sample's class, "
                      "but a condition=group run's samples have none: use "
                      "sample.filter.name=realism, or no filter")
  have = np.bincount(conditions.condition_ids(conditioning, train),
                     minlength=conditioning.num_conditions)
  counts = sweep.condition_budget(config.sample, conditioning, have)
  if is_cyclegan_run(run):
    check_translation_budget(counts, run, train.class_names, config.sample)
  return conditioning, counts


def _diffusion_sampler(config, run, conditioning, image_shape, mesh, step):
  """(sampler, EMA params, checkpoint step, manifest provenance, first stage or None) of a
  train_diffusion run; `step` pins the checkpoint a resumed sweep started with."""
  # Latent diffusion: the denoiser draws latents, which the run's autoencoder decodes.
  first_stage = latents.first_stage(config.sample.run_dir, run)
  model_shape = first_stage[0].latent_shape if first_stage else image_shape
  # The compute dtype may differ from training's: parameters are float32 either way.
  model_cfg = ml_collections.ConfigDict(run.model.to_dict())
  model_cfg.dtype = config.sample.dtype or model_cfg.dtype
  model = make_denoiser(model_cfg, conditioning.num_conditions)
  params, step = load_ema_params(config.sample.run_dir, run, model, model_shape, mesh,
                                 config.sample.checkpoint, step)
  d, s = run.diffusion, config.sample
  options = diffusion.sampler_options(
      sampler=s.sampler, num_steps=s.num_steps, cfg_scale=s.cfg_scale, eta=s.eta,
      spacing=s.spacing, clip_x0=s.clip_x0, num_classes=conditioning.num_conditions,
      prediction=d.prediction)
  schedule = make_schedule(d.schedule, d.num_timesteps)
  sampler = make_sampler(diffusion.denoise_fn(model), schedule, model_shape, mesh=mesh, **options)
  if first_stage:
    sampler = latents.DecodingSampler(sampler, *first_stage)
  provenance = {"compute_dtype": resolve_dtype(model_cfg.dtype), "sampler": options,
                "schedule": {"name": d.schedule, "num_timesteps": int(d.num_timesteps)}}
  return sampler, params, step, provenance, first_stage


def _gan_sampler(config, run, conditioning, image_shape, mesh, step):
  """The same for a train_gan run: G(z_i, y_i), one forward per image, no schedule."""
  del conditioning, image_shape   # a GAN is conditioned on classes, and draws images
  dtype = config.sample.dtype or run.model.dtype
  generator = load_gan(config.sample.run_dir, run, mesh, config.sample.checkpoint, step,
                       dtype=config.sample.dtype)
  provenance = {"compute_dtype": resolve_dtype(dtype), "sampler": generator.provenance,
                "schedule": None}
  return generator.sampler, generator.variables, generator.step, provenance, None


def sample(config, workdir: str, overwrite: bool = False, stop: StopRequest | None = None) -> dict:
  """Runs (or resumes) the sampling sweep of `config.sample` into WORKDIR/samples."""
  check_config(config, workdir)
  run = load_run_config(config.sample.run_dir, tasks=("train_diffusion", GAN_TASK))
  directory = os.path.join(workdir, synthetic_format.SAMPLES_DIR)
  done = workdir_lib.finished_results(workdir, config, overwrite)
  if done is not None:
    problem = sweep.damage(directory)
    if not problem:
      return done
    # The finished sweep lost shards since (disk damage, a deleted file): draw them again.
    log.warning("%s; the sweep in %s is unfinished again and draws what is missing", problem,
                directory)
    if jax.process_index() == 0:
      os.remove(os.path.join(workdir, workdir_lib.METRICS_FILE))
  # Everything is checked (config, plan, checkpoint) before anything is written to `workdir`.
  workdir_lib.check_prepare(workdir, config, overwrite)

  train = open_source(run.data, "train", seed=run.seed)
  conditioning, counts = sweep_budget(config, run, train)
  num_classes = conditioning.sweep_classes        # the classes the shards' labels range over
  image_shape = pipeline.input_shape(run.data, train)
  plan = sweep.make_plan(counts, int(config.sample.shard_size), conditioning)
  mesh = parallel.make_mesh(config.mesh)

  # A resumed sweep keeps the checkpoint step it started with, even if training went on; a
  # filtered sweep's plan is its first round's.
  filtered = bool(config.sample.filter.name)
  plan_dir = sweep.round_dir(workdir, 0) if filtered else directory
  previous = None if overwrite else sweep.previous_plan(plan_dir)
  step = previous["checkpoint"]["step"] if previous else None
  build = _gan_sampler if is_gan_run(run) else _diffusion_sampler
  sampler, params, step, provenance, first_stage = build(config, run, conditioning, image_shape, mesh,
                                                        step)
  s = config.sample
  manifest = {
      "num_classes": num_classes, "image_shape": list(image_shape),
      "class_names": list(train.class_names), "counts": counts.tolist(),
      "total": int(counts.sum()), "shard_size": plan.shard_size, "seed": int(config.seed),
      "run_dir": os.path.abspath(config.sample.run_dir),
      "checkpoint": {"which": config.sample.checkpoint, "step": step},
      **provenance,   # compute_dtype, sampler, schedule
      "label_order": "interleaved", "config": json.loads(config_lib.to_json(config)),
      "filter": filters.settings(s.filter) if filtered else None,
      **conditioning.manifest(),   # condition (and num_groups, group_names when grouped)
  }
  if first_stage:
    manifest["latent"] = {**first_stage[0].identity(), "latent_shape": list(first_stage[0].latent_shape),
                          "scale_factor": first_stage[1]}
  if conditioning.mode == "group":
    del manifest["class_names"]    # labels are all 0: the samples have no class
  sweep.check_same_plan(previous, manifest, plan_dir)
  scorer = None
  if filtered:  # the judge loads (and is checked) before anything is written
    scorer = filters.build_scorer(
        s.filter, num_classes, image_shape,
        filters.real_images(s.filter, run.data, run.seed, image_shape),
        os.path.join(workdir, filters.CACHE_DIR), mesh,
        classes=np.unique(conditioning.split(np.flatnonzero(counts))[0]))
  workdir_lib.prepare(workdir, config, overwrite)
  log.info("sweep of %d samples (per %s %s) from %s step %d into %s", plan.labels.size,
           {"class_group": "cell"}.get(conditioning.mode, conditioning.mode), counts.tolist(),
           config.sample.run_dir, step, directory)
  mean, std = augment.normalisation(first_stage[0].config.data if first_stage else run.data)
  root_key = jax.random.PRNGKey(config.seed)
  if filtered:
    result = sweep.run_filtered_sweep(
        sampler, params, root_key, counts, workdir, scorer, shard_size=plan.shard_size,
        batch_size=int(s.batch_size), mesh=mesh, mean=mean, std=std, manifest=manifest,
        max_attempts=float(s.max_attempts), stop=stop, conditioning=conditioning)
    if jax.process_index() == 0:
      filters.write_report(workdir, result, [sweep.round_dir(workdir, r)
                                             for r in range(result["acceptance"]["rounds"])])
    kept = [c["kept"] for c in result["acceptance"]["per_class"].values()]
    metrics = {"samples": int(sum(kept)), "counts": kept, "budget": counts.tolist(),
               "shards": len(result["shards"]), "checkpoint": manifest["checkpoint"],
               "acceptance": result["acceptance"]}
  else:
    result = sweep.run_sweep(sampler, params, root_key, plan, directory,
                             batch_size=int(s.batch_size), mesh=mesh, mean=mean, std=std,
                             manifest=manifest, stop=stop)
    metrics = {"samples": int(counts.sum()), "counts": counts.tolist(),
               "shards": plan.num_shards, "checkpoint": manifest["checkpoint"],
               "images_per_s": result["images_per_s"]}
  if first_stage:   # images/s above include decoding; this is the decoder's share
    metrics["decode"] = sampler.report()
  if jax.process_index() == 0:
    workdir_lib.write_json(os.path.join(workdir, workdir_lib.METRICS_FILE), metrics)
  return metrics
