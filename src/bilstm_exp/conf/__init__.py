"""The packaged configs: Hydra config groups, one per concern; each YAML extends its schema (config/).

Hydra reads them as ``pkg://bilstm_exp.conf`` (this file makes the folder a package Hydra can find);
a project's own ``./conf`` comes before them on the search path (hydra_plugins.bilstm_exp_searchpath).
Imports nothing.
"""
