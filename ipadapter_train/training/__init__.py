"""The training loop, its plan and its files.

`plan.py` checks what a run is given before any model loads; `trainer.py` is the loop (read it top to bottom);
`batches`, `buckets`, `encoding` and `validation` feed it; `checkpoint`, `identity`, `outputs` and `report` are
what a run leaves on disk; `precision`, `local_accelerator`, `allocator` and `memory` are how it runs on the
machine. A change to the step itself must keep the parity tests (tests/test_parity.py) equal to the reference.
"""
