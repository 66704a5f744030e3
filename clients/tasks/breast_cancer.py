"""Bundled task: breast-cancer diagnosis (30 tabular features, 2 classes) with an MLP."""

from clients.tasks.bundled import bundled_task
from clients.tasks.datasets import load_breast_cancer

task = bundled_task("breast-cancer", load_breast_cancer, num_features=30, num_classes=2)
