"""One measurement in a fresh process, so its peak RSS belongs to it alone (`python -m tinytitan.evaluate.bench_worker`).

Reads a JSON job on argv[1], prints one JSON line. Jobs:
- `speed`: pp (a batch of random tokens, logits only at the end, as llama-bench's pp) and tg (single
  tokens from an empty cache, as llama-bench's tg), the median of `repetitions`; time to first
  token of a task conversation (`messages`); CPU-seconds of each part (for energy); RAPL energy where readable.
- `depth`: `depth` random tokens prefilled in 512-token batches, then `tg` tokens decoded at that
  depth; the KV cache's size (llama.cpp's sequence state) and the process's peak RSS.
"""

from __future__ import annotations

import json
import statistics
import sys
import time

import numpy as np


def _random_tokens(engine, n: int, seed: int) -> list[int]:
    # ordinary pieces, away from the control tokens at the start of the vocabulary
    return np.random.default_rng(seed).integers(min(1000, engine.vocab_size // 2), engine.vocab_size - 1,
                                                size=n).tolist()


def speed(engine, job: dict) -> dict:
    from tinytitan.evaluate import energy

    pp, tg, reps = job["pp"], job["tg"], job["repetitions"]
    tokens = _random_tokens(engine, pp + tg, seed=0)
    context = engine.context  # the engine's llama.cpp context (engines.runtime.Context)
    context.clear()
    context.prefill(tokens[:16])  # warm-up: first-call allocations are not speed
    pp_times, tg_times, pp_energy, tg_energy = [], [], [], []
    for _ in range(reps):
        context.clear()
        with energy.measure() as m:
            started = time.perf_counter()
            context.prefill(tokens[:pp])
            pp_times.append(time.perf_counter() - started)
        pp_energy.append(m)
        context.clear()
        with energy.measure() as m:
            started = time.perf_counter()
            for i in range(tg):
                context.decode([tokens[pp + i]], i)
            tg_times.append(time.perf_counter() - started)
        tg_energy.append(m)
    ttft = []
    prompt = []
    if job.get("messages"):
        from tinytitan.model.chat_format import encode_chat
        from tinytitan.model.engines import SamplingParams

        prompt = encode_chat(engine, job["messages"])
        for _ in range(reps):
            context.clear()
            started = time.perf_counter()
            next(iter(engine.stream(prompt, SamplingParams(max_tokens=1))))
            ttft.append(time.perf_counter() - started)
    context.clear()

    def cpu_per_token(ms, n):
        return statistics.median(m.cpu_seconds for m in ms) / n

    def rapl_per_token(ms, n):
        values = [m.rapl_joules for m in ms if m.rapl_joules is not None]
        return statistics.median(values) / n if values else None

    return {"pp_tps": pp / statistics.median(pp_times), "tg_tps": tg / statistics.median(tg_times),
            "ttft_s": statistics.median(ttft) if ttft else None,
            "prompt_tokens": len(prompt),
            "cpu_s_per_prefill_token": cpu_per_token(pp_energy, pp), "cpu_s_per_decode_token": cpu_per_token(tg_energy, tg),
            "rapl_j_per_prefill_token": rapl_per_token(pp_energy, pp),
            "rapl_j_per_decode_token": rapl_per_token(tg_energy, tg),
            "rapl_domains": pp_energy[0].domains}


def depth(engine, job: dict) -> dict:
    n, tg = job["depth"], job["tg"]
    tokens = _random_tokens(engine, n + tg, seed=1)
    context = engine.context
    context.clear()
    started = time.perf_counter()
    context.prefill(tokens[:n])
    prefill = time.perf_counter() - started
    started = time.perf_counter()
    for i in range(tg):
        context.decode([tokens[n + i]], n + i)
    decode = time.perf_counter() - started
    kv = context.sequence_bytes()
    return {"depth": n, "prefill_s": prefill, "prefill_tps": n / prefill, "decode_tps": tg / decode,
            "kv_mb": kv / 2**20}


def main() -> None:
    from tinytitan.model.artifacts import parse_artifact
    from tinytitan.model.engines import peak_memory_mb

    job = json.loads(sys.argv[1])
    artifact = parse_artifact(job["artifact"])
    n_ctx = job["depth"] + job["tg"] + 8 if job["kind"] == "depth" else 4096
    engine = artifact.open(threads=job["threads"], n_ctx=n_ctx, swa_full=False)
    loaded_mb = peak_memory_mb()
    result = (depth if job["kind"] == "depth" else speed)(engine, job)
    print(json.dumps({**result, "threads": engine.threads, "rss_after_load_mb": loaded_mb,
                      "peak_rss_mb": peak_memory_mb()}))


if __name__ == "__main__":
    main()
