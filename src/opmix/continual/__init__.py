"""Components of continual midtraining (SPEC section 3): the probe segment and its proxies, per-stage schedules,
the grid oracle, LoRA-merge, fresh-data accounting and per-stage reports."""
