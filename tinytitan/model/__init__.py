"""The model: the registry of GGUF files, GGUF reading and writing, the torch Gemma 3, the chat format, the two engines, artifacts and run folders."""
