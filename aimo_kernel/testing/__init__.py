"""Test doubles that implement the real interfaces: fake engines (blocking and streaming), the simulated
engine of a GPU machine in virtual time with its hardware throughput models, and whole-run simulations.
Used by the tests, the benchmarks and ``profile``; never imported by what runs on Kaggle (the engine
registry names the fakes by string only).
"""
