"""Estimates made before a run, from the model as built: parameter counts and the model summary, a dry run
on fake tensors, FLOPs per token, the peak training memory and the largest batch that fits (`budget`).
No Lightning.
"""
