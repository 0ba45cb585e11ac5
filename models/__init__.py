"""Bubble classifiers, the synthetic renderer, training and evaluation (torch needed for training only)."""
