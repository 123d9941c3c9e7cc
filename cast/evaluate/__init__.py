"""Checkpoint conversion and evaluation of frozen backbones: linear classifier, VOC07 SVMs, k-NN."""
