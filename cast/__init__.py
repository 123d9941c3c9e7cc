"""Reproduction of CAST: MoCo with saliency-constrained crops and a Grad-CAM attention loss."""

__version__ = "0.1.0"
