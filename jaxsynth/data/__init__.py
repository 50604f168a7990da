"""jaxsynth.data."""
