"""The training loop (on accelerate), its learning-rate schedule and its learners (what a step optimises)."""
