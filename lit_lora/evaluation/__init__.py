"""Benchmark tasks on the model as lit_lora holds it, through lm-evaluation-harness: which tasks and how
(`settings`), running them (`harness`), and their numbers as tables and logger metrics (`tables`)."""
