"""Model-agnostic diffusion: noise schedules, training objectives and jitted samplers."""

from jaxsynth.diffusion.losses import (diffusion_loss, drop_labels, per_sample_loss, q_sample,
                                       snr_weight)
from jaxsynth.diffusion.samplers import (ClassifierGuidance, SamplerConfig, guided_eps_x0,
                                         make_sampler, sample, sample_keys, sample_noise,
                                         timesteps)
from jaxsynth.diffusion.schedules import (Schedule, cosine_betas, eps_from_v, eps_from_x0,
                                          linear_betas, make_schedule, output_to_eps_x0,
                                          prediction_target, scaled_linear_betas,
                                          schedule_from_betas, v_from_eps_x0, x0_from_eps,
                                          x0_from_v)
