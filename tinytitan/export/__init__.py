"""Export: GGUF writers, quantization with the native tools, the parity gate."""
