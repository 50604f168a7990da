"""jaxsynth.training."""
