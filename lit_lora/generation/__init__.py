"""Generating text: the settings, one decoding implementation (batched `generate` for the `generate` and
`predict` commands, a private-RNG sampler for validation samples), prompts in and completions out.
Knows no `LitLora`."""
