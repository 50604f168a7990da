"""BAGAN-GP and relatives (task train_gan): penalty, labels, rounds, determinism and resume."""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import bagan_gp, cyclegan as cyclegan_configs, diffusion as diffusion_configs
from configs import synthesis as synthesis_configs
from jaxsynth.errors import CheckpointError, ConfigError
from jaxsynth.gan import cycle, losses, rounds, state as gan_state
from jaxsynth.models import gan as gan_models
from jaxsynth.models.cyclegan import make_cyclegan
from jaxsynth.models.gan import make_gan
from jaxsynth.synthesis import gan_generator, sweep as sweep_lib
from jaxsynth.synthesis.generator import load_run_config
from jaxsynth.recipes import synthesis as synthesis_recipes
from jaxsynth.tasks import sample as sample_task
from jaxsynth.tasks.recipe import recipe as recipe_task
from jaxsynth.tasks import gan as gan_task
from jaxsynth.training import parallel
from jaxsynth.training.loop import Preempted, StopRequest
from tests.helpers import assert_trees_equal, load_params


def tiny(variant: str = "bagan_gp:tiny", **train):
  config = bagan_gp.get_config(variant)
  config.train.update(**train)
  return config


def test_gradient_penalty_equals_a_finite_difference_estimate():
  """Eq. 7-8 on a small smooth critic in float64: central differences give each image's
  gradient at x^ = a x_r + (1 - a) x_g, hence the penalty."""
  with jax.enable_x64(True):
    rng = np.random.default_rng(0)
    w1 = jnp.asarray(rng.normal(size=(48, 6)))
    w2 = jnp.asarray(rng.normal(size=(6,)))
    embed = jnp.asarray(rng.normal(size=(3, 6)))

    def critic(x, y):
      return jnp.tanh(x.reshape(x.shape[0], -1) @ w1) * embed[y] @ w2

    real = jnp.asarray(rng.normal(size=(3, 4, 4, 3)))
    fake = jnp.asarray(rng.normal(size=(3, 4, 4, 3)))
    labels = jnp.asarray([0, 2, 1])
    alpha = jnp.asarray(rng.uniform(size=(3, 1, 1, 1)))
    penalty = float(losses.gradient_penalty(critic, real, fake, labels, alpha))

    x_hat = np.asarray(alpha * real + (1 - alpha) * fake)
    eps, norms = 1e-6, []
    for i in range(3):
      grad = np.zeros(x_hat[i].size)
      for j in range(x_hat[i].size):
        step = np.zeros(x_hat[i].size)
        step[j] = eps
        up = x_hat[i:i + 1] + step.reshape(x_hat[i].shape)
        down = x_hat[i:i + 1] - step.reshape(x_hat[i].shape)
        grad[j] = (float(critic(jnp.asarray(up), labels[i:i + 1])[0])
                   - float(critic(jnp.asarray(down), labels[i:i + 1])[0])) / (2 * eps)
      norms.append(np.linalg.norm(grad))
  expected = np.mean((np.asarray(norms) - 1.0) ** 2)
  assert penalty == pytest.approx(expected, rel=1e-6)
  assert penalty > 0.01   # the gradients are not unit-norm, so the check has something to see


def _settings(**changes):
  base = dict(batch_size=64, num_classes=5, latent_dim=4)
  base.update(changes)
  return rounds.RoundSettings(**base)


def test_fake_labels_are_uniform_whatever_the_real_labels_are():
  """Balanced training: the real batch is all class 0, the fake labels still cover the 5
  classes uniformly (chi-square over 200 draws of 64)."""
  settings = _settings()
  real = jnp.zeros((64,), jnp.int32)
  draws = jax.vmap(lambda k: rounds.critic_draws(k, real, settings).fake_labels)(
      jax.random.split(jax.random.PRNGKey(0), 200))
  counts = np.bincount(np.asarray(draws).ravel(), minlength=5)
  expected = counts.sum() / 5
  chi2 = float(np.sum((counts - expected) ** 2 / expected))
  assert chi2 < 18.5, counts     # p = 0.001 for 4 degrees of freedom
  # fake_labels=real (cDRAGAN, eq. 12-13) keeps the batch's labels.
  same = rounds.critic_draws(jax.random.PRNGKey(1), real, _settings(fake_labels="real"))
  np.testing.assert_array_equal(same.fake_labels, real)


def test_wrong_labels_differ_from_the_real_ones_and_cover_the_others():
  settings = _settings()
  real = jnp.asarray(np.random.default_rng(0).integers(0, 5, 64), jnp.int32)
  wrong = jax.vmap(lambda k: rounds.critic_draws(k, real, settings).wrong_labels)(
      jax.random.split(jax.random.PRNGKey(0), 300))
  wrong = np.asarray(wrong)
  assert not np.any(wrong == np.asarray(real)[None])
  assert wrong.min() == 0 and wrong.max() == 4
  # each real class's wrong labels spread over the 4 other classes about evenly
  for c in range(5):
    picked = wrong[:, np.asarray(real) == c].ravel()
    share = np.bincount(picked, minlength=5) / picked.size
    assert share[c] == 0 and np.all(np.delete(share, c) > 0.2)
  assert rounds.critic_draws(jax.random.PRNGKey(0), real,
                             _settings(wrong_label_term=False)).wrong_labels is None


def _model_and_variables(config, num_classes=3, shape=(8, 8, 1)):
  model = make_gan(config.model, num_classes, shape)
  variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, *shape)), jnp.zeros((1,), jnp.int32))
  return model, jax.device_get(dict(variables))


def test_the_label_embedding_multiply_makes_images_per_class():
  model, variables = _model_and_variables(tiny())
  z = jnp.tile(jax.random.normal(jax.random.PRNGKey(1), (1, 8)), (3, 1))
  labels = jnp.arange(3)
  images = np.asarray(model.apply(variables, z, labels, method=model.generate))
  assert images.shape == (3, 8, 8, 1) and np.all(np.abs(images) <= 1)
  for a in range(3):
    for b in range(a + 1, 3):
      assert np.abs(images[a] - images[b]).max() > 1e-3
  # The same embedding row for every class: the same noise then gives the same image.
  params = dict(variables["params"])
  table = params["embedding"]["embedding"]
  params["embedding"] = {"embedding": jnp.tile(table[:1], (3, 1))}
  same = np.asarray(model.apply(dict(variables, params=params), z, labels, method=model.generate))
  np.testing.assert_allclose(same[0], same[1], atol=1e-6)
  np.testing.assert_allclose(same[0], same[2], atol=1e-6)


def _adam_count(opt_state) -> int:
  states = [s for s in jax.tree.leaves(opt_state, is_leaf=lambda x: isinstance(
      x, optax.ScaleByAdamState)) if isinstance(s, optax.ScaleByAdamState)]
  assert len(states) == 1
  return int(states[0].count)


@pytest.mark.parametrize("critic_steps", [5, 2])
def test_one_round_updates_the_critic_critic_steps_times_and_the_generator_once(critic_steps):
  config = tiny()
  model, variables = _model_and_variables(config)
  settings = _settings(batch_size=4, num_classes=3, latent_dim=8, critic_steps=critic_steps)
  tx = optax.adam(1e-3)
  mesh = parallel.make_mesh(config.mesh)
  state = gan_state.gan_state(variables, tx, tx, 0, mesh)
  before = jax.device_get(state.params)
  batch = {"image": jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (critic_steps * 4, 8, 8, 1)),
                                jnp.float32),
           "label": jnp.asarray(np.arange(critic_steps * 4) % 3, jnp.int32)}
  state, metrics = rounds.make_round(model, settings, tx, tx, mesh)(state, batch)
  assert _adam_count(state.opt_state["critic"]) == critic_steps
  assert _adam_count(state.opt_state["generator"]) == 1
  after = jax.device_get(state.params)
  for part in ("critic", "decoder", "embedding"):
    assert any(np.any(a != b) for a, b in zip(jax.tree.leaves(before[part]),
                                              jax.tree.leaves(after[part]))), part
  assert_trees_equal(before["encoder"], after["encoder"])   # not a player in the rounds
  assert int(state.step) == 1 and bool(metrics["finite"])


def _run(workdir, stop=None, variant="bagan_gp:tiny"):
  return gan_task.train_gan(tiny(variant), str(workdir), stop=stop)


@pytest.mark.parametrize("variant", ["bagan_gp:tiny", "wgan_gp:tiny", "bagan:tiny"])
def test_a_tiny_run_is_deterministic_and_resumes_bit_identically(tmp_path, variant):
  """Stopped once in the autoencoder stage and once between rounds, the run ends with the
  same parameters, optimiser states and batch statistics as an uninterrupted one."""
  whole = _run(tmp_path / "a", variant=variant)
  _run(tmp_path / "b", variant=variant)
  assert_trees_equal(load_params(str(tmp_path / "a")), load_params(str(tmp_path / "b")))

  stops = [StopRequest(at_step=3)]
  if variant.startswith("bagan"):
    stops.insert(0, StopRequest(at_step=2))   # inside the 3-step autoencoder stage
  for stop in stops:
    with pytest.raises(Preempted):
      _run(tmp_path / "c", stop=stop, variant=variant)
  resumed = _run(tmp_path / "c", variant=variant)
  assert_trees_equal(load_params(str(tmp_path / "a")), load_params(str(tmp_path / "c")))
  assert resumed["train"] == pytest.approx(whole["train"])
  if variant.startswith("bagan"):
    assert (tmp_path / "c" / "autoencoder" / "metrics.json").exists()
  assert sorted(p.name for p in (tmp_path / "a" / "grids").iterdir()) == [
      "step-000002.png", "step-000004.png"]


def test_the_critic_trunk_starts_from_the_encoder_or_from_scratch(tmp_path):
  config = tiny()
  setup = gan_task.build_setup(config)
  variables = gan_state.init_variables(setup.model, setup.image_shape, config.seed)
  trained = gan_task.autoencoder_stage(config, setup, str(tmp_path / "enc"), variables, None)
  assert_trees_equal(trained["params"]["critic"]["trunk"], trained["params"]["encoder"]["trunk"])
  config.gan.critic_init = "independent"
  fresh = gan_task.autoencoder_stage(config, setup, str(tmp_path / "enc"), variables, None)
  assert_trees_equal(fresh["params"]["critic"], variables["params"]["critic"])
  assert_trees_equal(fresh["params"]["decoder"], trained["params"]["decoder"])


@pytest.fixture(scope="module")
def gan_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("gan") / "run"
  gan_task.train_gan(tiny(), str(workdir))
  return str(workdir)


def _sweep(run_dir, workdir, batch_size=4, stop=None):
  config = diffusion_configs.get_config("sample")
  config.sample.update(run_dir=run_dir, budget="counts", class_counts=(3, 0, 2) + (1,) * 7,
                       shard_size=4, batch_size=batch_size)
  return sample_task.sample(config, str(workdir), stop=stop)


def _shards(workdir) -> dict:
  directory = os.path.join(str(workdir), "samples")
  out = {}
  for name in sorted(os.listdir(directory)):
    if name.startswith("shard-"):
      with np.load(os.path.join(directory, name)) as shard:
        out[name] = {k: shard[k] for k in shard.files}
  return out


def test_a_gan_sweep_is_the_same_whatever_the_batch_and_resumes_byte_identically(gan_run,
                                                                                 tmp_path):
  """Sample i is G(z_i, y_i) with z_i from fold_in(key, i): batch size and a stop change
  nothing; labels follow the budget."""
  metrics = _sweep(gan_run, tmp_path / "a")
  assert metrics["counts"] == [3, 0, 2] + [1] * 7 and metrics["shards"] == 3
  with pytest.raises(Preempted):
    _sweep(gan_run, tmp_path / "b", batch_size=2, stop=StopRequest(at_step=1))
  assert len(_shards(tmp_path / "b")) == 1
  _sweep(gan_run, tmp_path / "b", batch_size=2)
  a, b = _shards(tmp_path / "a"), _shards(tmp_path / "b")
  assert list(a) == list(b)
  for name in a:
    assert_trees_equal(a[name], b[name])
  labels = np.concatenate([s["labels"] for s in a.values()])
  assert np.bincount(labels, minlength=10).tolist() == [3, 0, 2] + [1] * 7
  images = np.concatenate([s["images"] for s in a.values()])
  assert images.dtype == np.uint8 and images.shape == (12, 8, 8, 1) and images.std() > 0
  with open(os.path.join(str(tmp_path / "a"), "samples", "manifest.json"),
            encoding="utf-8") as f:
    manifest = json.load(f)
  assert manifest["sampler"]["sampler"] == "gan" and manifest["schedule"] is None


def test_a_gan_run_has_no_best_checkpoint_to_sample(gan_run, tmp_path):
  config = diffusion_configs.get_config("sample")
  config.sample.update(run_dir=gan_run, checkpoint="best", budget="counts",
                       class_counts=(1,) * 10)
  with pytest.raises(CheckpointError, match="keeps only 'latest' checkpoints"):
    sample_task.sample(config, str(tmp_path / "s"))


def test_augment_recipe_with_a_bagan_gp_generator(tmp_path):
  """The recipe pipeline takes a GAN generator stage: generator (train_gan) -> sample (a GAN
  sweep) -> baseline -> augmented, ending with the report."""
  config = synthesis_configs.get_config("augment_gan_tiny")
  metrics = recipe_task(config, str(tmp_path))
  with open(tmp_path / "generator" / "config.json", encoding="utf-8") as f:
    assert json.load(f)["task"] == "train_gan"
  with open(tmp_path / "sample" / "samples" / "manifest.json", encoding="utf-8") as f:
    manifest = json.load(f)
  assert manifest["sampler"]["sampler"] == "gan" and manifest["total"] == 40
  assert set(metrics["comparison"]["metrics"]) >= {"accuracy", "mcc"}
  assert (tmp_path / "report.md").exists()


def test_guided_and_grouped_recipes_refuse_a_gan_generator():
  config = synthesis_configs.get_config("augment_gan_tiny")
  for name in ("online", "equal_scale"):
    config.recipe.name = name
    with pytest.raises(ConfigError, match="needs a diffusion generator"):
      synthesis_recipes.check_config(config)
  stages = synthesis_recipes.pipeline(synthesis_configs.get_config("diffupt_gan_tiny"), "/tmp/x",
                                      {n: n for n in ("train_gan", "train_diffusion", "sample",
                                                      "filter", "train_classifier")}).stages
  assert stages["generator"].run == "train_gan" and stages["generator"].config.task == "train_gan"
  assert stages["sample"].config.sample.budget == "counts"


def test_bagan_latents_follow_each_class_gaussian():
  """BAGAN's class-conditional latent generator: z = mu_c + S_c eps has mean mu_c and
  covariance S_c S_c^T, including a singular one (a class with fewer images than dimensions)."""
  rng = np.random.default_rng(0)
  a = rng.normal(size=(3, 3))
  few = rng.normal(size=(2, 3))                         # 2 images in 3-d: rank-1 covariance
  cov = [a @ a.T, np.cov(few, rowvar=False)]
  scales = []
  for c in cov:
    values, vectors = np.linalg.eigh(c)
    scales.append((vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T)
  latents = {"mean": jnp.asarray([[1.0, -2.0, 0.5], [0.0, 3.0, 1.0]]),
             "scale": jnp.asarray(np.stack(scales), jnp.float32)}
  labels = jnp.asarray([0] * 20000 + [1] * 20000)
  z = np.asarray(gan_models.class_conditional_latent(
      jax.random.normal(jax.random.PRNGKey(0), (40000, 3)), labels, latents))
  for c in range(2):
    draws = z[np.asarray(labels) == c]
    np.testing.assert_allclose(draws.mean(0), latents["mean"][c], atol=0.05)
    np.testing.assert_allclose(np.cov(draws, rowvar=False), cov[c], atol=0.08)


def test_bagan_losses_are_the_k_plus_1_way_cross_entropies():
  logits_real = jnp.asarray([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
  logits_fake = jnp.asarray([[0.0, 0.0, 3.0]])
  p = jax.nn.log_softmax(jnp.concatenate([logits_real, logits_fake]))
  expected = -(p[0, 0] + p[1, 1] + p[2, 2]) / 3        # fake = class index K = 2
  got = losses.classifier_critic_terms(logits_real, jnp.asarray([0, 1]), logits_fake, 2)
  assert float(got) == pytest.approx(float(expected), rel=1e-6)
  g = losses.classifier_generator_terms(logits_fake, jnp.asarray([1]))
  assert float(g) == pytest.approx(float(-jax.nn.log_softmax(logits_fake)[0, 1]), rel=1e-6)


def test_bagan_fakes_are_one_in_k_plus_1_of_the_critic_batch():
  s = _settings(batch_size=64, num_classes=5, adversarial="classifier", wrong_label_term=False)
  draws = rounds.critic_draws(jax.random.PRNGKey(0), jnp.zeros((64,), jnp.int32), s)
  assert draws.noise.shape == (13, 4) and draws.fake_labels.shape == (13,)   # ceil(64 / 5)


# ------------------------------------------------------------------------------ CycleGAN


def _cycle_model(config=None):
  config = config or cyclegan_configs.get_config("tiny")
  model = make_cyclegan(config.model, (8, 8, 1))
  tx = optax.adam(1e-3)
  state = cycle.init_state(model, (8, 8, 1), tx, tx, 0, parallel.make_mesh(config.mesh))
  return model, tx, state


def test_cycle_loss_is_the_l1_of_eq_1_and_the_critics_least_squares():
  """The step's `cycle` is mean |F(G(x)) - x| + mean |G(F(y)) - y| under the step's starting
  parameters, and its critic loss the least-squares one of both critics."""
  model, tx, state = _cycle_model()
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.uniform(-1, 1, (4, 8, 8, 1)), jnp.float32)
  y = jnp.asarray(rng.uniform(-1, 1, (4, 8, 8, 1)), jnp.float32)
  p = jax.device_get(state.params)
  run = lambda method, images: model.apply({"params": p}, images, method=method)  # noqa: E731
  fake_y, fake_x = run(model.to_y, x), run(model.to_x, y)
  expected = (np.mean(np.abs(np.asarray(run(model.to_x, fake_y)) - np.asarray(x)))
              + np.mean(np.abs(np.asarray(run(model.to_y, fake_x)) - np.asarray(y))))
  step = cycle.step_program(model, cycle.CycleSettings(identity_weight=0.0), tx, tx)
  new_state, metrics = jax.jit(step)(state, {"x": x, "y": y})
  assert float(metrics["cycle"]) == pytest.approx(expected, rel=1e-5)
  d = jax.device_get(new_state.params)      # the critics score the fakes of the updated G
  assert float(cycle.lsgan_critic(jnp.ones(3), jnp.zeros(3))) == 0.0
  assert float(cycle.lsgan_critic(jnp.zeros(2), jnp.ones(2))) == pytest.approx(1.0)
  assert float(cycle.lsgan_generator(jnp.ones(5))) == 0.0
  assert any(np.any(a != b) for a, b in zip(jax.tree.leaves(p["d_x"]),
                                            jax.tree.leaves(d["d_x"])))


def _cycle_run(workdir, stop=None):
  config = cyclegan_configs.get_config("tiny")
  return gan_task.train_gan(config, str(workdir), stop=stop)


def test_a_cyclegan_run_resumes_bit_identically_and_its_sweep_translates_in_order(tmp_path):
  _cycle_run(tmp_path / "a")
  with pytest.raises(Preempted):
    _cycle_run(tmp_path / "b", stop=StopRequest(at_step=2))
  _cycle_run(tmp_path / "b")
  assert_trees_equal(load_params(str(tmp_path / "a")), load_params(str(tmp_path / "b")))
  assert (tmp_path / "a" / "grids" / "step-000004.png").exists()

  config = diffusion_configs.get_config("sample")
  config.sample.update(run_dir=str(tmp_path / "a"), budget="counts",
                       class_counts=(0, 5) + (0,) * 8, shard_size=4, batch_size=2)
  sample_task.sample(config, str(tmp_path / "sweep"))
  shards = _shards(tmp_path / "sweep")
  images = np.concatenate([s["images"] for s in shards.values()])
  assert np.concatenate([s["labels"] for s in shards.values()]).tolist() == [1] * 5
  # sample i is G(x_i): the i-th train image of class 0, translated
  generator = gan_generator.load_gan(str(tmp_path / "a"), load_run_config(
      str(tmp_path / "a"), tasks=("train_gan",)), parallel.make_mesh(config.mesh))
  source = generator.variables["source"]
  direct = generator.model.apply({"params": generator.variables["params"]}, source[:5],
                                 method=generator.model.to_y)
  np.testing.assert_array_equal(images, sweep_lib.to_uint8(np.asarray(direct), 0.5, 0.5))
  config.sample.class_counts = (3, 5) + (0,) * 8
  with pytest.raises(ConfigError, match="translates class 0 into class 1"):
    sample_task.sample(config, str(tmp_path / "sweep2"))
