"""Recipes against class imbalance: classic losses and samplers, and the synthetic-data recipes."""
