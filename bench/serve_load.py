"""Load test: `tinytitan serve` on the real Gemma 3 270M under 4x as many concurrent clients as slots.

Starts the server (a subprocess, loopback), learns each prompt's greedy answer one request at a time,
then lets `--clients` threads (default 4 x slots) send mixed requests for `--seconds`: chat and
completions, streaming and not, every one greedy, so each answer that comes back can be checked
against the one learned before. A request refused with 429 waits a little and tries again. The
server's RSS is sampled every second.

Reported: requests sent, completed, refused (429), lost (accepted but failed or cut short), wrong
(answer differs from the learned one), p50/p99 latency of completed requests, p50/p99 time to first
token of streamed ones, generated tokens/s over the run, how fast a 429 came back, and RSS at the
start, the end and its peak. The last line is one JSON document.

    python bench/serve_load.py [--slots 2] [--clients 8] [--seconds 60] [--queue 2]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
INGREDIENTS = ROOT.parent / "shared" / "data" / "ingredients" / "tastecooking-ingredients-2024.csv"


def prompts(count: int) -> list[str]:
    import csv

    with open(INGREDIENTS, newline="", encoding="utf-8") as file:
        lines = [row["input"] for row in csv.DictReader(file)][:count]
    return [f"Recipe ingredient: {line}\nThe main ingredient is" for line in lines]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def start_server(*flags: str) -> tuple[subprocess.Popen, str]:
    """`tinytitan serve FLAGS` on a free loopback port, once its /health answers: (process, base URL)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "tinytitan", "serve", "--port", str(port), *flags],
                              stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 300
    while True:
        try:
            urllib.request.urlopen(url + "/health", timeout=5).read()
            return server, url
        except OSError:
            if server.poll() is not None or time.time() > deadline:
                server.kill()
                sys.exit(f"the server did not start: {server.stderr.read()}")
            time.sleep(0.2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slots", type=int, default=2)
    parser.add_argument("--queue", type=int, default=2)
    parser.add_argument("--clients", type=int, default=None, help="default: 4 x slots")
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--prompts", type=int, default=24)
    args = parser.parse_args()
    clients = args.clients or 4 * args.slots

    import openai

    server, url = start_server("--slots", str(args.slots), "--queue", str(args.queue))
    try:
        client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=600)
        model = client.models.list().data[0].id
        texts = prompts(args.prompts)

        def ask(kind: str, prompt: str, stream: bool):
            """(answer, completion tokens, time to first token or None)."""
            started = time.perf_counter()
            first = None
            if kind == "chat":
                call = client.chat.completions.create(model=model, messages=[{"role": "user", "content": prompt}],
                                                      max_tokens=args.max_tokens, temperature=0, stream=stream,
                                                      **({"stream_options": {"include_usage": True}} if stream else {}))
            else:
                call = client.completions.create(model=model, prompt=prompt, max_tokens=args.max_tokens,
                                                 temperature=0, stream=stream,
                                                 **({"stream_options": {"include_usage": True}} if stream else {}))
            if not stream:
                choice = call.choices[0]
                return (choice.message.content if kind == "chat" else choice.text), call.usage.completion_tokens, None, \
                    choice.finish_reason
            text, tokens, finish = "", 0, None
            for chunk in call:
                if chunk.usage:
                    tokens = chunk.usage.completion_tokens
                for choice in chunk.choices:
                    piece = choice.delta.content if kind == "chat" else choice.text
                    if piece and first is None:
                        first = time.perf_counter() - started
                    text += piece or ""
                    finish = choice.finish_reason or finish
            return text, tokens, first, finish

        learned_started = time.perf_counter()
        expected = {(kind, p): ask(kind, p, False)[0] for kind in ("chat", "completion") for p in texts}
        learn_seconds = time.perf_counter() - learned_started

        records: list[dict] = []
        lock = threading.Lock()
        stop_at = time.perf_counter() + args.seconds
        rss: list[float] = []

        def sample_rss():
            while time.perf_counter() < stop_at:
                rss.append(rss_mb(server.pid))
                time.sleep(1)

        def worker(seed: int):
            rng = random.Random(seed)
            while time.perf_counter() < stop_at:
                kind, prompt, stream = rng.choice(("chat", "completion")), rng.choice(texts), rng.random() < 0.5
                started = time.perf_counter()
                record = {"kind": kind, "stream": stream}
                try:
                    text, tokens, first, finish = ask(kind, prompt, stream)
                    record.update(status=200, seconds=time.perf_counter() - started, tokens=tokens, ttft=first,
                                  right=text == expected[(kind, prompt)], finish=finish)
                except openai.RateLimitError:
                    record.update(status=429, seconds=time.perf_counter() - started)
                    time.sleep(rng.uniform(0.05, 0.2))
                except Exception as error:  # an accepted request that failed: lost
                    record.update(status=getattr(error, "status_code", -1), error=repr(error)[:200],
                                  seconds=time.perf_counter() - started)
                with lock:
                    records.append(record)

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
        sampler = threading.Thread(target=sample_rss)
        began = time.perf_counter()
        sampler.start()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed = time.perf_counter() - began
        sampler.join()
        metrics = urllib.request.urlopen(url + "/metrics").read().decode()
    finally:
        server.terminate()
        server.wait(timeout=60)

    done = [r for r in records if r["status"] == 200]
    refused = [r for r in records if r["status"] == 429]
    lost = [r for r in records if r["status"] not in (200, 429)]
    wrong = [r for r in done if not r["right"]]
    latency = [r["seconds"] for r in done]
    ttft = [r["ttft"] for r in done if r["ttft"] is not None]
    tokens = sum(r["tokens"] for r in done)
    head, tail = rss[:10], rss[-10:]
    result = {
        "bench": "serve_load", "model": "gemma-3-270m (Q4_K_M)", "slots": args.slots, "queue": args.queue,
        "clients": clients, "seconds": round(elapsed, 1), "max_tokens": args.max_tokens,
        "learned_answers": len(expected), "learn_seconds": round(learn_seconds, 1),
        "sent": len(records), "completed": len(done), "refused_429": len(refused), "lost": len(lost),
        "wrong": len(wrong), "streamed": sum(r["stream"] for r in done),
        "latency_p50_s": percentile(latency, 0.5), "latency_p99_s": percentile(latency, 0.99),
        "ttft_p50_s": percentile(ttft, 0.5), "ttft_p99_s": percentile(ttft, 0.99),
        "refusal_p99_s": percentile([r["seconds"] for r in refused], 0.99),
        "tokens_per_second": round(tokens / elapsed, 1), "completion_tokens": tokens,
        "rss_mb_start": round(statistics.median(head), 1) if head else None,
        "rss_mb_end": round(statistics.median(tail), 1) if tail else None,
        "rss_mb_peak": round(max(rss), 1) if rss else None,
        "errors": [r["error"] for r in lost][:5],
        "metrics_cancelled": sum(float(line.split()[-1]) for line in metrics.splitlines()
                                 if line.startswith("tinytitan_generation_requests_total") and "cancelled" in line),
    }
    result["rss_growth"] = (round(result["rss_mb_end"] / result["rss_mb_start"] - 1, 4)
                            if result["rss_mb_start"] else None)
    result["pass"] = (not lost and not wrong and len(done) > 0 and len(refused) > 0
                      and (result["rss_growth"] or 0) < 0.05)
    print(f"{len(records)} requests in {elapsed:.0f} s from {clients} clients on {args.slots} slots: "
          f"{len(done)} completed ({result['streamed']} streamed), {len(refused)} refused with 429 "
          f"(p99 {result['refusal_p99_s'] or 0:.3f} s), {len(lost)} lost, {len(wrong)} wrong; latency p50 "
          f"{result['latency_p50_s'] or 0:.2f} s, p99 {result['latency_p99_s'] or 0:.2f} s; "
          f"{result['tokens_per_second']} tok/s; RSS {result['rss_mb_start']} -> {result['rss_mb_end']} MB "
          f"(peak {result['rss_mb_peak']})", file=sys.stderr)
    print(json.dumps(result))


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
