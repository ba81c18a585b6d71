"""Reading and building the frozen models: single-file SD checkpoints (`single_file.py`, key maps in `ldm/`),
diffusers folders (`loading.py`, `parts.py`), CLIP vision encoders and their features (`clip_vision.py`,
`clip_features.py`, `image_encoders.py`), the CLIP scorer model (`clip_model.py`), and the random-weight stand-ins
that tests, demos and benchmarks use (`random_init.py`, `random_models.py`, `testmodels.py`, `sd15.py`)."""
