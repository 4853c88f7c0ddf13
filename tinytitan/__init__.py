"""tinytitan: turn Gemma 3 270M into a task specialist on a CPU, and ship it to the edge.

The package reads as the pipeline. Shared nouns: `models` (which model, the cache),
`gguf_files` (GGUF validation, reading and writing), `torch_model` (GGUF -> PyTorch),
`chat_format` (the one Gemma turn format), `engines` (torch and llama.cpp behind one interface).
Verbs, one module each, behind the lazy `cli`: `info`, `generate`, `chat`, `perplexity`, `parity`.
"""

__version__ = "0.1.0"
