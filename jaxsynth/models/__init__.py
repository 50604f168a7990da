"""jaxsynth.models."""
