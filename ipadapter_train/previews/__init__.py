"""What a run shows while it trains: preview grids at several adapter weights, their CLIP scores and a page.

`sources.py` fixes the preview set (held-out images from `holdout.py`), `rounds.py` decides when rounds come and
what they cost (one rule for the trainer, the CLI and the node), `sampler.py` renders, `scores.py` scores,
`grid.py` and `page.py` write, and `runner.py` is what the trainer calls each step.
"""
