"""bench/diffusion_train_step.py runs end to end on a tiny UNet and prints, on its last stdout
line, the fields every benchmark (ours and the torch peer's) shares, consistent with each other."""

import json
import math
import os
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

COMMON = ("benchmark", "framework", "precision", "batch", "params", "seconds", "seconds_median",
          "images_per_s", "cpu_seconds_median", "compile_s", "cpu", "versions", "config")


def test_diffusion_train_step_prints_the_common_fields():
  batch, reps = 4, 2
  env = dict(os.environ)
  # The tests' shared XLA cache (tests/conftest.py): a rerun skips the step's compile.
  env.setdefault("JAX_COMPILATION_CACHE_DIR", os.environ.get("JAXSYNTH_TEST_XLA_CACHE") or
                 os.path.join(tempfile.gettempdir(), "jaxsynth-test-xla-cache"))
  env.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
  done = subprocess.run(
      [sys.executable, os.path.join(ROOT, "bench", "diffusion_train_step.py"),
       "--image-size", "8", "--channels", "8", "--res-blocks", "1", "--attn-res", "none",
       "--norm-groups", "8", "--time-embed-dim", "32", "--conv-impl", "xla",
       "--batch", str(batch), "--reps", str(reps), "--warmup", "0",
       "--matmul-size", "128", "--matmul-reps", "1"],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr[-3000:]
  result = json.loads(done.stdout.strip().splitlines()[-1])
  missing = [k for k in COMMON if k not in result]
  assert not missing, missing
  assert result["benchmark"] == "diffusion_train_step"
  assert result["framework"] == "jaxsynth"
  assert result["precision"] == "float32"
  assert result["batch"] == batch == result["config"]["batch"]
  assert result["params"] > 0
  assert len(result["seconds"]) == reps and all(s > 0 for s in result["seconds"])
  assert math.isclose(result["seconds_median"], statistics.median(result["seconds"]))
  assert math.isclose(result["images_per_s"], batch / result["seconds_median"])
  assert result["cpu_seconds_median"] > 0 and result["compile_s"] > 0
  assert {"model", "flags", "machine_class", "cores", "load_avg_1min"} <= set(result["cpu"])
  assert {"jax", "jaxlib", "flax", "python"} <= set(result["versions"])
  # The task's loss as configs/diffusion.py sets it, Adam at the benchmark's rate.
  assert result["loss_options"]["prediction"] == "eps"
  assert result["loss_options"]["label_dropout"] == 0.1
  assert result["train_config"]["optimizer"] == "adam"
  assert result["train_config"]["learning_rate"] == 1e-4
  assert result["matmul_dtype"] == "float32" and result["matmul_reps_taken"] == 1 + reps
  assert result["step_flops"] > 0
  assert math.isclose(result["achieved_flops_per_s"],
                      result["step_flops"] / result["seconds_median"])
  assert math.isclose(result["fraction_of_matmul"],
                      result["achieved_flops_per_s"] / result["matmul_flops_per_s"])
