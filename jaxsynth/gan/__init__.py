"""Adversarial training: the GAN losses (losses.py) and the jitted training rounds (rounds.py)."""
