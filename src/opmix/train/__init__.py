"""The training loop (on accelerate) and its learning-rate schedule."""
