"""The DVC pipeline's stages (dvc.yaml): prepare -> train -> evaluate, one ``bilstm-exp`` call each.

Owns: outputs (paths, atomic outputs, DVC lineage tags), params (params.yaml and the configs it is
composed from), prepare, train, evaluate (one module per stage), commands (the subcommands).
May import every package below ``cli``.
"""
