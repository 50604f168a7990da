"""bench/sampler.py runs end to end on a tiny UNet and its JSON ratios follow from its figures."""

import math

from bench import sampler as bench_sampler


def test_sampler_benchmark_reports_both_matmul_probes_and_consistent_ratios():
  dtype = "bfloat16"
  args = bench_sampler.parse_args([
      "--image-size", "8", "--channels", "8,16", "--attn-res", "4", "--norm-groups", "4",
      "--time-embed-dim", "16", "--head-dim", "4", "--batch", "2", "--steps", "2",
      "--reps", "1", "--forward-reps", "1", "--matmul-size", "64", "--matmul-reps", "1",
      "--dtype", dtype])
  result = bench_sampler.run(args)
  assert result["matmul_dtype"] == "float32"                 # the definition
  assert result["compute_dtype_matmul_dtype"] == dtype
  assert result["compute_dtype_matmul_accumulate_dtype"] == "float32"
  assert math.isclose(result["fraction_of_matmul_peak"],
                      result["achieved_gflops"] / result["matmul_gflops"])
  assert math.isclose(result["fraction_of_compute_dtype_matmul_peak"],
                      result["achieved_gflops"] / result["compute_dtype_matmul_gflops"])
  assert math.isclose(result["overhead_ratio"],
                      result["sampler_s_median"] / (result["nfe"] * result["forward_ms"] / 1e3))
  assert math.isclose(result["images_per_s"], 2 / result["sampler_s_median"])
  # A tiny model is not the reference: no claim against its figures.
  assert result["reference"]["comparable"] is False
  assert result["meets_aims"]["images_per_s_over_reference"] is None
  assert result["matmul_reps"] == 2        # one before and one after the forwards of the call
