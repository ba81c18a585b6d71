"""Hyperparameter search: which settings, answered by held-out scores, on Optuna.

`space.py` is what a search draws from (the default space and a user's TOML file that fixes or widens it);
`objective.py` what judges a trial (the held-out preview score, or without a scorer the held-out validation loss);
`study.py` runs the Optuna study whose trials are ordinary training runs, pruned from their preview rounds;
`memory.py` keeps batch sizes within memory; `trials.py` turns the trials into rows, which `page.py` shows as
`search.html` (and the ComfyUI node as a table image).
"""
