"""Training side of the project: datasets, augmentation, training loops, calibration, evaluation and export.

Everything here may use torch; nothing under `service/` imports this package at module level.
"""
