"""Hyperparameter search (issue 20): which settings, answered by held-out scores, on Optuna.

`space.py` is what a search draws from: the default space (learning rate, steps, variant, batch size, condition
dropout) and a user's TOML file that fixes or widens any of it. Each trial is an ordinary training run.
"""
