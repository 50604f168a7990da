"""jaxsynth.metrics."""
