"""``bilstm-exp`` and ``python -m bilstm_exp``: the subcommands and the one error boundary.

Owns: commands (the table of every subcommand: name, help, the owning module's ``add_arguments`` and
command function), main (the parser built from it, the error boundary), train (``bilstm-exp train``
and the glue between Hydra and a run), init (``bilstm-exp init``). The top layer: may import every
package, lazily, so ``--help`` and usage errors load neither MLflow nor TensorFlow.
"""
