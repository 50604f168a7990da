"""With 8 simulated CPU devices, training equals the 1-device run and outputs stay sharded."""

import json
import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    import json, sys, tempfile
    import jax, numpy as np
    from jax.sharding import PartitionSpec as P
    from jaxsynth.recipes import classifier as classifier_lib
    from jaxsynth.tasks import classifier
    from jaxsynth.training import parallel
    from tests.helpers import load_params, tiny_config

    assert jax.device_count() == 8, jax.devices()
    jax.config.update("jax_compilation_cache_dir", sys.argv[1])
    out = {}
    params = {}
    for devices in (1, 8):
      workdir = tempfile.mkdtemp()
      # 16 px, SGD: at 8 px the last stage is 1x1 and BatchNorm over it amplifies
      # reduction-order rounding ~1e4-fold; Adam's m / sqrt(v) turns rounding in
      # near-zero gradients into full-size steps. Both would hide what this test checks.
      config = tiny_config(steps=4, train__optimizer="sgd", train__learning_rate=0.05,
                           data__image_size=16)
      config.mesh.data = devices
      results = classifier.train_and_evaluate(config, workdir)
      params[devices] = load_params(workdir)
      out[f"test_{devices}"] = results["test"]["balanced_accuracy"]
    diffs = jax.tree.map(lambda a, b: float(np.max(np.abs(np.asarray(a) - np.asarray(b)))),
                         params[1]["params"], params[8]["params"])
    out["max_param_diff"] = max(jax.tree.leaves(diffs))

    # The compiled steps keep the batch sharded: nothing is silently replicated.
    config = tiny_config(steps=4)
    setup = classifier_lib.build_setup(config)
    mesh = setup.mesh
    predict = classifier_lib.make_predict_step(setup.model, False, mesh)
    tx = __import__("optax").sgd(0.1)
    state = classifier_lib.init_state(setup.model, tx, setup.input_shape, 0, mesh)
    images = jax.device_put(np.zeros((16, *setup.input_shape), np.float32),
                            parallel.batch_sharding(mesh))
    probs = predict(state, images)
    out["predict_spec"] = str(probs.sharding.spec)
    out["predict_devices"] = len(probs.sharding.device_set)
    out["state_spec"] = str(jax.tree.leaves(state.params)[0].sharding.spec)
    print("RESULT" + json.dumps(out))
""")


def test_eight_devices_equal_one_device(tmp_path):
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
             JAX_PLATFORMS="cpu")
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  cache = os.path.join(str(tmp_path), "xla-cache")
  proc = subprocess.run([sys.executable, "-c", SCRIPT, cache], cwd=root, env=env,
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  line = [l for l in proc.stdout.splitlines() if l.startswith("RESULT")][-1]
  out = json.loads(line[len("RESULT"):])
  # Same batches, same math; only the order of the cross-device reductions differs.
  assert out["max_param_diff"] < 1e-5, out
  assert abs(out["test_1"] - out["test_8"]) < 1e-6, out
  assert out["predict_spec"] in ("P('data',)", "PartitionSpec('data',)") and out["predict_devices"] == 8, out
  assert out["state_spec"] in ("P()", "PartitionSpec()"), out
