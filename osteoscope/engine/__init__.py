"""Training, checkpoints, evaluation and prediction on run directories."""
