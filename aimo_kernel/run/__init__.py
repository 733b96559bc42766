"""A run from start to end, as it happens on Kaggle: the :class:`~aimo_kernel.run.runner.Runner` lifecycle
(engine load, restart, budgets, the never-raise boundary), the typed trace, the shim that serves the
competition API (:mod:`~aimo_kernel.run.kaggle`), its strict local mocks, the dry-run, and the one reader
of problem files. Scoring against gold answers is not here (:mod:`aimo_kernel.tools.evaluate`).
"""
