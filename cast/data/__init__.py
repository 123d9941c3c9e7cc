"""Data stages: verify an image tree, estimate saliency masks, check image and mask pairs."""
