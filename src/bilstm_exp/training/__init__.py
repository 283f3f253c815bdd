"""Training: one run as a story, and the runs made of runs (cross-validation, sweeps).

Owns the run (runner.py), its callbacks and checkpoints, distribution, evaluation, profiling, what a
run records and tells its user, cross-validation and the Hydra sweep callback. Wires ``data``,
``models`` and ``tracking`` together; may import every package below it, never ``cli`` or ``stages``.
"""
