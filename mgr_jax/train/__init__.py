"""Training: state, optimiser, checkpoints and the epoch loop."""
