"""Training one model with Lightning: the LightningModule `LitLora` (`module`), its optimizer and
learning-rate schedule, the RNG states and the checkpoint's own section, checkpoint files, speed settings,
distributed helpers, the run's step count, and the declared contracts between objects. What watches or
steers a run from outside the module is in `lit_lora.callbacks`.
"""
