"""Bundled task: handwritten digits (8x8 images, 10 classes) with an MLP or a small CNN."""

from clients.tasks.bundled import bundled_task
from clients.tasks.datasets import load_digits

task = bundled_task("digits", load_digits, num_features=64, num_classes=10,
                    image_shape=(1, 8, 8))
