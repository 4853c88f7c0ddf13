"""Fine-tuning: the settings, batching, the chunked completion loss, the training loop, checkpoints."""
