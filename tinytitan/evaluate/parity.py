"""`tinytitan parity [FILE]`: do the torch and llama engines compute the same model?

Both engines score the same token windows (llama.cpp's perplexity chunks: BOS first, second half
scored) and the report gives, over the scored positions: top-1 agreement, the KL divergence
KL(torch || llama) of the next-token distributions (mean, p99, max), and each engine's
perplexity. It also checks that both tokenizers cut the text into the same ids.
`--max-kl/--min-top1/--max-ppl-diff` turn the report into a gate (exit 1 when it fails).

Without FILE it reads the WikiText-2 excerpt bundled in `tinytitan/assets` (CC BY-SA 3.0).
"""

from __future__ import annotations

import json
import math
import time
from importlib.resources import files

import numpy as np

from tinytitan import options
from tinytitan.errors import TinyTitanError
from tinytitan.evaluate.perplexity import Chunk, chunks, log_softmax, perplexity_of, read_text

BUNDLED_TEXT = "wikitext2_test.txt"  # the WikiText-2 test set; parity scores its first --tokens


def add_arguments(parser) -> None:
    parser.add_argument("file", nargs="?", default=None,
                        help="UTF-8 text to compare on (default: the bundled WikiText-2 test set)")
    options.add_model(parser)
    parser.add_argument("--tokens", type=options.positive_int, default=2048,
                        help="score at least this many tokens (default 2048)")
    parser.add_argument("--chunk-size", dest="chunk_size", type=options.positive_int, default=512,
                        help="tokens per window (default 512)")
    parser.add_argument("--threads", "-t", type=options.positive_int, default=None)
    gate = parser.add_argument_group("gate (exit 1 when a figure is outside its bound)")
    gate.add_argument("--max-kl", type=float, default=None, help="e.g. 0.01")
    gate.add_argument("--min-top1", type=float, default=None, help="e.g. 0.95")
    gate.add_argument("--max-ppl-diff", type=float, default=None, help="relative, e.g. 0.01 for 1%%")
    options.add_json(parser)


def compare_chunk(torch_engine, llama_engine, chunk: Chunk) -> dict[str, np.ndarray]:
    """Per-position KL(torch || llama), top-1 match, and each engine's target NLL."""
    import torch

    from tinytitan.evaluate.kl import kl_divergence

    window = chunk.window[:-1]
    t_logp = log_softmax(torch_engine.score(window, chunk.first))  # (positions, vocab)
    l_logp = log_softmax(llama_engine.score(window, chunk.first))
    kl = kl_divergence(t_logp, l_logp)
    top1 = t_logp.argmax(-1) == l_logp.argmax(-1)
    targets = torch.from_numpy(chunk.targets)[:, None]
    return {
        "kl": kl.double().numpy(),
        "top1": top1.numpy(),
        "nll_torch": (-t_logp.gather(1, targets)[:, 0]).double().numpy(),
        "nll_llama": (-l_logp.gather(1, targets)[:, 0]).double().numpy(),
    }


def run_parity(torch_engine, llama_engine, text: str, min_tokens: int = 2048, ctx: int = 512,
               on_chunk=None) -> dict:
    start = time.perf_counter()
    llama_ids = llama_engine.tokenize(text, bos=True)
    torch_ids = torch_engine.tokenize(text, bos=True)
    per_chunk = ctx - ctx // 2 - 1
    n_chunks = math.ceil(min_tokens / per_chunk)
    parts = chunks(llama_ids, llama_engine.bos_id, ctx, n_chunks)
    if len(parts) < n_chunks:
        raise TinyTitanError(f"the text gives only {len(parts)} chunks of {ctx} tokens; "
                             f"{n_chunks} are needed to score {min_tokens} tokens (use a longer text)")
    rows: dict[str, list[np.ndarray]] = {}
    for index, chunk in enumerate(parts, start=1):
        for key, values in compare_chunk(torch_engine, llama_engine, chunk).items():
            rows.setdefault(key, []).append(values)
        if on_chunk:
            on_chunk(index, len(parts))
    kl, top1 = np.concatenate(rows["kl"]), np.concatenate(rows["top1"])
    ppl_torch, _ = perplexity_of(np.concatenate(rows["nll_torch"]))
    ppl_llama, _ = perplexity_of(np.concatenate(rows["nll_llama"]))
    compared = min(len(llama_ids), len(torch_ids))
    return {
        "model": str(llama_engine.ref.path),
        "tokens_scored": int(len(kl)),
        "chunks": len(parts),
        "ctx": ctx,
        "top1_agreement": float(top1.mean()),
        "kl_mean": float(kl.mean()),
        "kl_p99": float(np.percentile(kl, 99)),
        "kl_max": float(kl.max()),
        "ppl_torch": ppl_torch,
        "ppl_llama": ppl_llama,
        "ppl_rel_diff": abs(ppl_llama - ppl_torch) / ppl_torch,
        "tokenizers_agree": llama_ids == torch_ids,
        "tokenizer_agreement": float(np.mean(np.asarray(llama_ids[:compared]) == np.asarray(torch_ids[:compared]))),
        "seconds": time.perf_counter() - start,
    }


def gate_failures(report: dict, max_kl=None, min_top1=None, max_ppl_diff=None) -> list[str]:
    failures = []
    if max_kl is not None and report["kl_mean"] > max_kl:
        failures.append(f"mean KL {report['kl_mean']:.5f} > {max_kl}")
    if min_top1 is not None and report["top1_agreement"] < min_top1:
        failures.append(f"top-1 agreement {report['top1_agreement']:.2%} < {min_top1:.2%}")
    if max_ppl_diff is not None and report["ppl_rel_diff"] > max_ppl_diff:
        failures.append(f"perplexity differs by {report['ppl_rel_diff']:.2%} > {max_ppl_diff:.2%}")
    return failures


def run(args) -> None:
    from tinytitan.model.engines import load_engine
    from tinytitan.progress import progress_bar

    text = read_text(args.file or files("tinytitan.assets").joinpath(BUNDLED_TEXT))
    with load_engine("torch", args.model, threads=args.threads) as torch_engine, \
            load_engine("llama", args.model, threads=args.threads, n_ctx=args.chunk_size) as llama_engine:
        with progress_bar("parity") as progress:
            task = progress.add_task("chunks", total=None, note="")
            report = run_parity(torch_engine, llama_engine, text, args.tokens, args.chunk_size,
                                lambda done, total: progress.update(task, completed=done, total=total))
    failures = gate_failures(report, args.max_kl, args.min_top1, args.max_ppl_diff)
    report["gate"] = "failed" if failures else ("passed" if any(
        v is not None for v in (args.max_kl, args.min_top1, args.max_ppl_diff)) else "not set")
    if args.json:
        print(json.dumps(report))
    else:
        print_report(report)
    if failures:
        raise TinyTitanError("parity gate failed: " + "; ".join(failures))


def print_report(report: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"torch vs llama.cpp on {report['tokens_scored']} tokens "
                        f"({report['chunks']} chunks of {report['ctx']})")
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_row("top-1 agreement", f"{report['top1_agreement']:.2%}")
    table.add_row("KL(torch || llama) mean", f"{report['kl_mean']:.5f}")
    table.add_row("KL p99 / max", f"{report['kl_p99']:.4f} / {report['kl_max']:.4f}")
    table.add_row("perplexity torch", f"{report['ppl_torch']:.4f}")
    table.add_row("perplexity llama.cpp", f"{report['ppl_llama']:.4f}")
    table.add_row("perplexity difference", f"{report['ppl_rel_diff']:.3%}")
    table.add_row("tokenizers agree", "yes" if report["tokenizers_agree"] else
                  f"no ({report['tokenizer_agreement']:.2%} of positions)")
    table.add_row("gate", report["gate"])
    table.add_row("time", f"{report['seconds']:.1f} s")
    Console().print(table)
