"""Babysitting a run: the monitor callback, its diagnostics and the TensorBoard event writer."""
