"""A run's folder: its config record and results, checkpoints, evaluation
history, metric logging and parks.

Imports capsnet_jax.errors only.
"""
