"""Transfer learning: importing public checkpoints and the transfer protocols."""
