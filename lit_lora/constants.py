"""Values several layers share, each defined once."""

# The label of a position that trains nothing (prompt, padding): PyTorch's cross_entropy default.
IGNORE_INDEX = -100
MB = 2**20
# The `lit_lora.format` field of our checkpoints. Loading refuses a format it does not know.
CHECKPOINT_FORMAT = 1
