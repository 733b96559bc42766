"""Solving one problem with SC-TIR: the one solver core and what it is made of.

* :mod:`~aimo_kernel.solve.pipeline`: :class:`Solver`, the asynchronous core (``tir.mode`` async, or
  Numina's synchronous rounds), over any engine and sandbox;
* :mod:`~aimo_kernel.solve.blocking`: blocking engines as streaming ones, with a watchdog;
* :mod:`~aimo_kernel.solve.candidate`: one candidate's state and its transitions;
* :mod:`~aimo_kernel.solve.dialect`: how a model writes code and reads its output (Numina's blocks);
* :mod:`~aimo_kernel.solve.result`: :class:`SolveResult`, :class:`Effort`, the vote and the fallback.
"""

from aimo_kernel.solve.candidate import CandidateResult, RoundRecord
from aimo_kernel.solve.dialect import Dialect, NuminaDialect
from aimo_kernel.solve.pipeline import Solver
from aimo_kernel.solve.result import Effort, SolveResult, default_effort, fallback_result

__all__ = ["CandidateResult", "Dialect", "Effort", "NuminaDialect", "RoundRecord", "SolveResult", "Solver",
           "default_effort", "fallback_result"]
