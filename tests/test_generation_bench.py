"""bench/generation_metrics.py runs end to end at tiny sizes and prints the JSON it documents."""

import json
import math

from bench import generation_metrics as bench_generation

TINY = ["--quick", "--image-size", "8", "--width", "8", "--n", "40", "--batch", "32",
        "--reps", "1", "--train-steps", "1", "--train-batch", "16", "--metric-n", "120",
        "--metric-dim", "8", "--kid-subsets", "2", "--kid-subset-size", "50"]


def test_generation_benchmark_prints_its_json_last(capsys):
  returned = bench_generation.main(TINY)
  result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert result == json.loads(json.dumps(returned))
  assert {"config", "device", "versions", "extraction", "metrics_seconds", "metric_values",
          "aims"} <= set(result)
  assert {"cpu", "cpu_flags", "cpus", "jax", "jaxlib", "xla_flags"} <= set(result["device"])
  extraction = result["extraction"]
  assert {"extractor_images_per_s", "eval_forward_images_per_s", "ratio", "batch", "n",
          "width", "forward_only_ratio", "host_fraction_of_extractor"} <= set(extraction)
  assert (extraction["n"], extraction["batch"], extraction["width"]) == (40, 32, 8)
  assert extraction["batches"] == 2 and extraction["padded_images"] == 24
  assert extraction["image_shape"] == [8, 8, 1]                      # digits are gray
  assert math.isclose(extraction["ratio"], extraction["extractor_images_per_s"]
                      / extraction["eval_forward_images_per_s"])
  assert extraction["probs_max_abs_diff"] < 1e-4     # both forwards compute the same network
  assert result["aims"]["extraction_ratio_ge_0.9"] == (extraction["ratio"] >= 0.9)
  seconds = result["metrics_seconds"]
  for name in ("fid", "feature_stats", "frechet_distance", "kid", "knn_radii",
               "precision_recall", "density_coverage", "mmd_rbf", "realism_scores",
               "generation_metrics"):
    assert seconds[name] >= 0.0, name
  report = result["metric_values"]["report"]
  assert (report["n_real"], report["feature_dim"]) == (120, 8)
  assert report["fid"] == result["metric_values"]["fid"]


def test_quick_sets_small_sizes_that_flags_override():
  args = bench_generation.parse_args(["--quick", "--n", "100"])
  assert (args.n, args.metric_n, args.metric_dim) == (100, 1000, 64)
  args = bench_generation.parse_args([])
  assert (args.n, args.width, args.metric_n, args.metric_dim) == (2048, 64, 10000, 512)
  assert (args.kid_subsets, args.kid_subset_size, args.k) == (100, 1000, 3)
