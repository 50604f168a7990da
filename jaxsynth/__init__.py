"""jaxsynth: synthetic data against class imbalance in medical imaging, in JAX/Flax."""

__version__ = "0.1.0"

from jaxsynth import hardware as _hardware

# Before jax starts its backend: XLA:CPU's fast convolution setting (see jaxsynth/hardware.py).
_hardware.configure_xla()
