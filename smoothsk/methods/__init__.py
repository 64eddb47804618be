"""Training methods: one module per method, each a pure loss and a small estimator class.

:mod:`~smoothsk.methods.attacks` holds what several methods share (noise draws, the
l2 PGD attack on the smoothed soft classifier).
"""
