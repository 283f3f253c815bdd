"""Configuration: the dataclass schemas (every default in one place), their checks, and Hydra composition.

Owns: checks (range checks), data_schema, model_schema, optimizer_schema, run_schema (one module per
group: the defaults and their checks), schema (the options table, ExperimentConfig, validate),
registration (the schemas in Hydra's ConfigStore), overrides (command-line keys checked before
composing), plain (the config as plain dicts), compose (composing the configs outside ``@hydra.main``;
the packaged configs and a project's ``conf/``).
May import: ``errors``, ``extras``, ``plugins``, ``tracking.redaction`` (layer 0) only. Nothing here
imports TensorFlow or MLflow, opens a data file, or writes.
"""
