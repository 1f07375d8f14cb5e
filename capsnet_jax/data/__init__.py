"""Datasets: the registry of (dataset, setup) specs, pure augmentation ops,
MNIST IDX files, MultiMNIST pairs and the host input pipeline.

Imports capsnet_jax.errors only.
"""
