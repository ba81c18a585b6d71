"""Judging adapters and images: the CLIP scorer (`scorer.py`), test generation (`generate.py`) and the
evaluation of an adapter against references and prompts (`evaluate.py`, its files in `report.py`)."""
