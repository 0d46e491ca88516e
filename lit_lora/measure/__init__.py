"""Numbers about a built model or this process: parameter counts, FLOPs per token, a training-memory
estimate, host and device memory. No Lightning."""
