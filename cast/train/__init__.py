"""Pretraining under torch.distributed: data loading, checkpoints, metrics and the training loop."""
