"""Configuration: the dataclass schemas (every default in one place), their checks, and Hydra composition.

Owns: schema.py (the schemas and validation), compose.py (composing conf/ outside ``@hydra.main``).
May import: ``errors`` only. Nothing here imports TensorFlow or MLflow, opens a data file, or writes.
"""
