"""Synthesis stages: sampling sweeps (sweep.py)."""
