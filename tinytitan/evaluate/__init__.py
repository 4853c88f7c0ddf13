"""Evaluation: task metrics with CIs, KL, standard benchmarks, perplexity, parity, speed and energy."""
