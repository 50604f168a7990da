"""Randomness by global sample index (same sample whatever the batch or device count), one
compiled program per sampler, and the batch sharding kept over 8 simulated devices."""

import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsynth.diffusion.samplers import make_sampler
from tests.test_diffusion_samplers import (SCHEDULE, SCHEDULE50, draw, gaussian_eps,
                                           tiny)  # noqa: F401  (tiny is a fixture)


def test_sample_i_is_the_same_whatever_the_batch(tiny):
  """A real (conv) network, CFG on, per-step noise on; batch 8 vs 4 + 4 vs a permutation."""
  net, params = tiny
  fn = make_sampler(net.apply, SCHEDULE50, (4, 4, 1), sampler="ddim", num_steps=10, eta=1.0,
                    cfg_scale=2.0, num_classes=2, clip_x0=1.0)
  labels = np.arange(8) % 2
  key = jax.random.key(7)
  whole = np.asarray(fn(params, labels, np.arange(8), key))
  halves = np.concatenate([np.asarray(fn(params, labels[:4], np.arange(4), key)),
                           np.asarray(fn(params, labels[4:], np.arange(4, 8), key))])
  np.testing.assert_allclose(halves, whole, atol=1e-6)
  perm = np.array([5, 2, 7, 0])
  np.testing.assert_allclose(np.asarray(fn(params, labels[perm], perm, key)), whole[perm],
                             atol=1e-6)
  other = np.asarray(fn(params, labels, np.arange(8), jax.random.key(8)))
  assert np.mean(np.abs(other - whole) > 1e-3) > 0.5   # another root key, other samples


@pytest.mark.parametrize("sampler", ["ddpm", "dpm_solver_pp_2m"])
def test_analytic_samples_are_bit_identical_across_batches(sampler):
  s = SCHEDULE50
  kw = dict(sampler=sampler, num_steps=10, eta=1.0, apply_fn=gaussian_eps(s), schedule=s)
  x8, _ = draw(8, **kw)
  x4, _ = draw(4, **kw)
  np.testing.assert_array_equal(x8[:4], x4)


def test_the_sampler_is_one_compiled_program(tiny):
  net, params = tiny
  traces = []

  def apply_fn(p, x, t, labels):
    traces.append(x.shape)
    return net.apply(p, x, t, labels)

  fn = make_sampler(apply_fn, SCHEDULE, (4, 4, 1), sampler="ddim", num_steps=50,
                    cfg_scale=3.0, num_classes=2)
  labels, idx = jnp.arange(4) % 2, jnp.arange(4)
  jaxpr = jax.make_jaxpr(fn)(params, labels, idx, jax.random.key(0))
  text = str(jaxpr)
  assert "while[" in text or "scan[" in text
  fn(params, labels, idx, jax.random.key(0))
  fn(params, 1 - labels, idx + 4, jax.random.key(1))
  assert fn._cache_size() == 1
  assert traces == [(8, 4, 4, 1)]   # the network is traced once (inside the loop), 2B wide
  lowered = fn.lower(params, labels, idx, jax.random.key(0)).compile().as_text()
  assert "while" in lowered


# --- 8 simulated devices -------------------------------------------------------------------------

SHARDED_SCRIPT = textwrap.dedent("""
    import json, re, sys
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import Mesh
    from jaxsynth.diffusion import make_sampler, make_schedule
    from tests.test_diffusion_samplers import TinyDenoiser

    assert jax.device_count() == 8, jax.devices()
    jax.config.update("jax_compilation_cache_dir", sys.argv[1])
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    net = TinyDenoiser()
    params = net.init(jax.random.key(0), jnp.zeros((1, 4, 4, 1)), jnp.zeros(1, jnp.int32),
                      jnp.zeros(1, jnp.int32))
    s = make_schedule("linear", 50)
    kw = dict(sampler="ddim", num_steps=6, eta=1.0, cfg_scale=2.0, num_classes=2, clip_x0=1.0)
    labels, idx, key = np.arange(16) % 2, np.arange(16), jax.random.key(3)
    single = make_sampler(net.apply, s, (4, 4, 1), **kw)
    mesh = Mesh(np.asarray(jax.devices()), ("data",))
    sharded = make_sampler(net.apply, s, (4, 4, 1), mesh=mesh, **kw)
    a = np.asarray(single(params, labels, idx, key))
    out = sharded(params, labels, idx, key)
    compiled = sharded.lower(params, labels, idx, key).compile()
    try:
      sharded(params, labels[:12], idx[:12], key)
      uneven = "no error"
    except Exception as e:
      uneven = type(e).__name__ + ": " + str(e)
    print("RESULT" + json.dumps({
        "max_diff": float(np.max(np.abs(a - np.asarray(out)))),
        "spec": str(out.sharding.spec), "devices": len(out.sharding.device_set),
        "compiled_out_spec": str(compiled.output_shardings.spec),
        "shard_shapes": sorted({tuple(sh.data.shape) for sh in out.addressable_shards}),
        "uneven": uneven,
        # CFG's cond/uncond pairs stay on their device: the loop moves no data between devices.
        "collectives": len(re.findall("all-gather|all-to-all|collective-permute|all-reduce",
                                      compiled.as_text()))}))
""")


def test_eight_devices_equal_one_and_keep_the_batch_sharding():
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
             JAX_PLATFORMS="cpu")
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  cache = jax.config.jax_compilation_cache_dir or ""   # the suite's cache (conftest.py)
  proc = subprocess.run([sys.executable, "-c", SHARDED_SCRIPT, cache], cwd=root, env=env,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  line = [l for l in proc.stdout.splitlines() if l.startswith("RESULT")][-1]
  out = json.loads(line[len("RESULT"):])
  assert out["max_diff"] < 1e-5, out
  assert out["spec"] in ("P('data',)", "PartitionSpec('data',)") and out["devices"] == 8, out
  assert out["compiled_out_spec"] == out["spec"], out
  assert out["shard_shapes"] == [[2, 4, 4, 1]], out
  assert out["collectives"] == 0, out
  assert out["uneven"].startswith("ConfigError") and "multiple of the 8" in out["uneven"], out
