"""Where training starts from: base causal LMs of any family and their tokenizers, from the Hub or a local
folder (`hub`), and QLoRA's quantized base through bitsandbytes (`quantization`).
"""
