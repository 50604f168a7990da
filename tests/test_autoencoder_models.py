"""VQ and KL autoencoders: shapes, the straight-through estimator and its losses, the EMA
codebook, dead-code restarts, the Gaussian posterior and its KL."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxsynth.models import autoencoder as ae

TINY = dict(channels=(8, 16), res_blocks=1, norm_groups=4, latent_channels=3, image_channels=1)


def _x(n=2, size=8, seed=0):
  return jax.random.uniform(jax.random.PRNGKey(seed), (n, size, size, 1), minval=-1, maxval=1)


def test_vq_autoencoder_shapes_and_encode_decode_agree():
  model = ae.VQAutoencoder(num_codes=16, attention=True, **TINY)
  x = _x(size=16)
  variables = model.init(jax.random.PRNGKey(0), x)
  assert set(variables) == {"params", ae.STATS} and model.factor == 2
  recon, aux = model.apply(variables, x)
  assert recon.shape == x.shape and aux["indices"].shape == (2, 8, 8)
  z, _ = model.apply(variables, x, method=model.encode)
  assert z.shape == (2, 8, 8, 3)
  np.testing.assert_allclose(model.apply(variables, z, method=model.decode), recon, atol=1e-6)
  # Every latent vector is exactly a codebook row.
  codebook = variables["params"]["quantizer"]["codebook"]
  np.testing.assert_allclose(z, codebook[aux["indices"]], atol=1e-6)


@pytest.mark.parametrize("levels", [1, 2, 3, 4])
@pytest.mark.parametrize("kind", ["vq", "kl"])
def test_encode_decode_shapes_for_every_factor(kind, levels):
  cls = ae.VQAutoencoder if kind == "vq" else ae.KLAutoencoder
  model = cls(**dict(TINY, channels=(8,) * levels, attention=levels > 2))
  x = jax.ShapeDtypeStruct((2, 16, 24, 1), jnp.float32)
  variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), x)
  f = 2 ** (levels - 1)
  assert model.factor == f
  z = jax.eval_shape(lambda v, x: model.apply(v, x, method=model.encode), variables, x)
  z = z[0]
  assert z.shape == (2, 16 // f, 24 // f, 3)
  out = jax.eval_shape(lambda v, z: model.apply(v, z, method=model.decode), variables, z)
  assert out.shape == (2, 16, 24, 1)


def test_ema_update_matches_a_hand_computation():
  quantizer = ae.VectorQuantizer(num_codes=3, code_dim=2, ema_decay=0.8, usage_decay=0.5)
  stats = dict(quantizer.init(jax.random.PRNGKey(0), jnp.zeros((1, 2)))[ae.STATS])
  stats["codebook"] = jnp.asarray([[0.0, 0.0], [1.0, 1.0], [5.0, 5.0]])
  stats["embed_sum"] = stats["codebook"]
  z = np.array([[0.1, -0.1], [0.2, 0.0], [0.9, 1.3]], np.float32)   # codes 0, 0, 1
  (_, aux), new = quantizer.apply({ae.STATS: stats}, z, train=True, mutable=[ae.STATS])
  new = new[ae.STATS]
  counts = np.array([2.0, 1.0, 0.0])
  cluster = 0.8 * np.ones(3) + 0.2 * counts
  embed = 0.8 * np.asarray(stats["codebook"]) + 0.2 * np.stack(
      [z[0] + z[1], z[2], np.zeros(2)])
  np.testing.assert_allclose(new["cluster_size"], cluster, rtol=1e-6)
  np.testing.assert_allclose(new["embed_sum"], embed, rtol=1e-6)
  np.testing.assert_allclose(new["codebook"], embed / cluster[:, None], rtol=1e-6)
  np.testing.assert_allclose(new["usage"], 0.5 / 3 + 0.5 * counts / 3, rtol=1e-6)
  np.testing.assert_array_equal(aux["indices"], [0, 0, 1])


def test_nearest_codes_and_perplexity():
  rng = np.random.default_rng(0)
  codebook, z = rng.normal(size=(7, 3)), rng.normal(size=(5, 4, 3))
  brute = np.argmin(((z[..., None, :] - codebook) ** 2).sum(-1), axis=-1)
  np.testing.assert_array_equal(ae.nearest_codes(jnp.asarray(z), jnp.asarray(codebook)), brute)
  np.testing.assert_allclose(ae.perplexity(jnp.zeros(10, jnp.int32), 4), 1.0)
  np.testing.assert_allclose(ae.perplexity(jnp.arange(8) % 4, 4), 4.0, rtol=1e-6)


def test_straight_through_and_the_two_losses_reach_the_right_parameters():
  quantizer = ae.VectorQuantizer(num_codes=8, code_dim=2, beta=0.25)
  z = jax.random.normal(jax.random.PRNGKey(1), (4, 3, 2))
  variables = quantizer.init(jax.random.PRNGKey(0), z)
  params = variables["params"]

  def out(p, z, which):
    z_q, aux = quantizer.apply({"params": p, ae.STATS: variables[ae.STATS]}, z)
    return jnp.sum(z_q * 3.0) if which == "output" else aux[which]

  # The decoder's input passes the gradient to z unchanged (straight-through) ...
  np.testing.assert_allclose(jax.grad(out, argnums=1)(params, z, "output"), 3.0 * np.ones(z.shape))
  # ... the codebook loss moves only the codebook, the commitment loss only the encoder side.
  assert np.abs(jax.grad(out)(params, z, "codebook_loss")["codebook"]).sum() > 0
  np.testing.assert_allclose(jax.grad(out, argnums=1)(params, z, "codebook_loss"), 0.0)
  np.testing.assert_allclose(jax.grad(out)(params, z, "commitment_loss")["codebook"], 0.0)
  z_q, aux = quantizer.apply(variables, z)
  np.testing.assert_allclose(aux["commitment_loss"], 0.25 * np.mean((z - z_q) ** 2), rtol=1e-6)
  np.testing.assert_allclose(aux["codebook_loss"], np.mean((z - z_q) ** 2), rtol=1e-6)


def test_ema_codebook_moves_to_its_vectors_and_unused_codes_stay():
  quantizer = ae.VectorQuantizer(num_codes=4, code_dim=2, ema_decay=0.9)
  variables = quantizer.init(jax.random.PRNGKey(0), jnp.zeros((1, 2)))
  assert "params" not in variables
  stats = variables[ae.STATS]
  start = np.asarray(stats["codebook"])
  target = jnp.asarray([[0.5, -0.25]] * 6)        # every vector goes to the same code
  k = int(ae.nearest_codes(target[:1], stats["codebook"])[0])
  for _ in range(100):
    (_, aux), new = quantizer.apply({ae.STATS: stats}, target, train=True, mutable=[ae.STATS])
    stats = new[ae.STATS]
  np.testing.assert_allclose(stats["codebook"][k], target[0], atol=1e-3)
  others = np.array([j for j in range(4) if j != k])
  np.testing.assert_allclose(stats["codebook"][others], start[others], rtol=1e-3)
  assert float(aux["codebook_loss"]) == 0.0 and float(aux["codes_used"]) == 0.25
  assert float(stats["usage"][k]) > 0.6 and float(stats["usage"][others].max()) < 0.1
  # Evaluation leaves the statistics alone.
  _, untouched = quantizer.apply({ae.STATS: stats}, target, train=False, mutable=[ae.STATS])
  np.testing.assert_array_equal(untouched[ae.STATS]["usage"], stats["usage"])


def test_dead_codes_restart_on_encoder_outputs_in_both_codebook_kinds():
  z = jnp.asarray(np.random.default_rng(0).normal(size=(32, 2)), jnp.float32)
  usage = jnp.asarray([0.5, 0.0001, 0.4999, 0.0])
  for ema in (0.0, 0.9):
    quantizer = ae.VectorQuantizer(num_codes=4, code_dim=2, ema_decay=ema)
    variables = quantizer.init(jax.random.PRNGKey(0), z)
    params = variables.get("params", {})
    stats = dict(variables[ae.STATS], usage=usage)
    params, stats, n = ae.restart_dead_codes(params, stats, z, jax.random.PRNGKey(2), 1e-3)
    codebook = stats["codebook"] if ema else params["codebook"]
    old = variables[ae.STATS]["codebook"] if ema else variables["params"]["codebook"]
    assert int(n) == 2
    for j in (1, 3):       # restarted: now exactly one of the encoder outputs
      assert np.min(np.abs(np.asarray(z) - np.asarray(codebook[j])).sum(-1)) < 1e-6
    np.testing.assert_array_equal(codebook[np.array([0, 2])], old[np.array([0, 2])])
    np.testing.assert_allclose(stats["usage"], [0.5, 0.25, 0.4999, 0.25])
    if ema:
      np.testing.assert_array_equal(stats["embed_sum"][1], codebook[1])
      assert float(stats["cluster_size"][3]) == 1.0


def test_kl_autoencoder_posterior_and_kl():
  model = ae.KLAutoencoder(attention=False, **TINY)
  x = _x(size=16)
  variables = model.init(jax.random.PRNGKey(0), x)
  mean, logvar = model.apply(variables, x, method=model.encode)
  assert mean.shape == logvar.shape == (2, 8, 8, 3)
  # Evaluation decodes the mean; training samples z with the "latent" rng.
  recon, aux = model.apply(variables, x)
  np.testing.assert_allclose(recon, model.apply(variables, mean, method=model.decode), atol=1e-6)
  a, _ = model.apply(variables, x, train=True, rngs={"latent": jax.random.PRNGKey(1)})
  b, _ = model.apply(variables, x, train=True, rngs={"latent": jax.random.PRNGKey(1)})
  c, _ = model.apply(variables, x, train=True, rngs={"latent": jax.random.PRNGKey(2)})
  np.testing.assert_array_equal(a, b)
  assert np.abs(np.asarray(a) - np.asarray(c)).max() > 0
  m, lv = np.asarray(mean, np.float64), np.asarray(logvar, np.float64)
  expected = np.mean(np.sum(0.5 * (m ** 2 + np.exp(lv) - 1 - lv), axis=(1, 2, 3)))
  np.testing.assert_allclose(aux["kl"], expected, rtol=1e-5)
  assert float(ae.gaussian_kl(jnp.zeros((2, 3)), jnp.zeros((2, 3)))) == 0.0


def test_a_vq_autoencoder_learns_to_reconstruct_a_batch():
  model = ae.VQAutoencoder(num_codes=32, attention=False, **TINY)
  x = _x(n=4)
  variables = model.init(jax.random.PRNGKey(0), x)
  params, stats = variables["params"], variables[ae.STATS]
  tx = optax.adam(3e-3)
  opt = tx.init(params)

  @jax.jit
  def step(params, stats, opt):
    def loss_fn(p):
      (recon, aux), new = model.apply({"params": p, ae.STATS: stats}, x, train=True,
                                      mutable=[ae.STATS])
      rec = jnp.mean(jnp.abs(recon - x))
      return rec + aux["codebook_loss"] + aux["commitment_loss"], (rec, new[ae.STATS])
    (_, (rec, stats)), g = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt = tx.update(g, opt)
    return optax.apply_updates(params, updates), stats, opt, rec

  first = None
  for _ in range(150):
    params, stats, opt, rec = step(params, stats, opt)
    first = float(rec) if first is None else first
  assert float(rec) < 0.5 * first
