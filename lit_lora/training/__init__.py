"""Lightning plumbing the module and the CLI use: checkpoint files and the checkpoint callback, safe stops,
speed settings, distributed helpers, the weight layout a 4-bit base trains on, and the declared contracts
between objects. Imports no `LitLora`."""
