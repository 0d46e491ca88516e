"""Lightning plumbing the module and the CLI use: checkpoint files and the checkpoint callback, safe stops,
speed settings, distributed helpers and the declared contracts between objects. Imports no `LitLora`."""
