"""The method: MoCo with saliency-constrained crop pairs and the CAST attention loss on Grad-CAM maps.

``config`` defines the parameters. ``boxes``, ``augment`` and ``transforms``
turn an image and its saliency mask into a training sample. ``moco``,
``distributed``, ``gradcam`` and ``losses`` build the model and its losses,
and ``step`` runs one training step.
"""
