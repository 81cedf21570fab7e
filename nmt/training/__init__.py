"""The training loop, checkpoints, optimizer and learning-rate schedules."""
