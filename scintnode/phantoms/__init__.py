"""Synthetic studies with ground truth: the NM header builder (nm.py) and one generator per study kind.

Everything made here is synthetic and says so; it feeds tests, benchmarks and training, never a patient."""
