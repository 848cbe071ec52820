"""Continual instruction tuning (SPEC section 3): task data, scorers, generation and the learners' batches."""
