"""The rules of SC-TIR that need no engine, sandbox or clock of their own: reading and voting answers
(:mod:`~aimo_kernel.core.answers`), stopping early when they agree (:mod:`~aimo_kernel.core.agreement`), and
sharing the run's time over its problems (:mod:`~aimo_kernel.core.budget`). Pure functions and small state;
no I/O, no vLLM or torch.
"""
