"""Yield-gated rollouts of firmware sets: plan and states, storage, yield reads, the engine."""
