"""The DVC pipeline's stages (dvc.yaml): prepare -> train -> evaluate, one ``bilstm-exp`` call each.

May import every package below ``cli``.
"""
