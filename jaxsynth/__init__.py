"""jaxsynth: synthetic data against class imbalance in medical imaging, in JAX/Flax."""

__version__ = "0.1.0"
