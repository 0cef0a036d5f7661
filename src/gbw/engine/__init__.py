"""Training engine: loop, data order, evaluation, checkpoints, logs."""
