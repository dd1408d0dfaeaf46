"""Tokenization without torch: one tokenization of a training example, packing and counts."""
