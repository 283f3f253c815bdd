"""Analysis: comparing recorded runs (``bilstm-exp compare``), run reports and plots, ``bilstm-exp bench``.

May import: ``tracking`` (reading runs), ``config``, ``errors``; the bench also ``training`` and ``models``.
"""
