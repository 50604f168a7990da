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


def test_latent_sampler_benchmark_times_the_decoder_apart_and_compares_with_pixels():
  args = bench_sampler.parse_args([
      "--latent", "--image-size", "16", "--ae-channels", "8,8,8", "--ae-res-blocks", "1",
      "--latent-channels", "3", "--channels", "8,16", "--attn-res", "2", "--norm-groups", "4",
      "--time-embed-dim", "16", "--head-dim", "4", "--batch", "2", "--steps", "2",
      "--reps", "1", "--forward-reps", "1", "--matmul-size", "64", "--matmul-reps", "1"])
  result = bench_sampler.run(args)
  latent = result["latent"]
  assert latent["factor"] == 4 and latent["latent_shape"] == [4, 4, 3]
  assert latent["image_shape"] == [16, 16, 3]
  # the sampler ran on latents; the decoder's time is its own figure, added end to end
  assert math.isclose(latent["sampler_images_per_s"], result["images_per_s"])
  assert math.isclose(latent["images_per_s_end_to_end"],
                      2 / (result["sampler_s_median"] + latent["decode_s_median"]))
  # the same denoiser on 16 px pixels, attention at the same level (2 x f = 8 px)
  assert latent["pixel"]["attn_res"] == [8]
  assert math.isclose(latent["latent_over_pixel_images_per_s"],
                      latent["images_per_s_end_to_end"] / latent["pixel"]["images_per_s"])
