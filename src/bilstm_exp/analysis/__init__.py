"""Analysis: comparing recorded runs (``bilstm-exp compare``), run reports and plots, ``bilstm-exp bench``.

``compare`` ties query (reading runs), samples (which evaluations count), groups, statistics, verdicts,
baseline, table and plots into one report; ``statistics`` and ``formatting`` import nothing of the package
(cross-validation uses the same 95% interval). May import: ``tracking`` (reading runs), ``config``,
``errors``; the bench also ``training``, ``data`` and ``models``.
"""
