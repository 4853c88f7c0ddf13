"""`tinytitan bench ARTIFACT...`: speed, memory and energy of artifacts on this machine, side by side.

Per artifact and thread count: prefill (pp512) and decode (tg128) tokens/s measured the way
llama-bench measures them, time to first token of a task prompt, file size and peak RSS, each in a
fresh process (`bench_worker.py`); llama.cpp's own `llama-bench` on the same file in the same run
where the native tools are built. Context scaling fills 1K..32K tokens and decodes at that depth:
prefill time, decode speed, KV cache size and RSS (Gemma 3's sliding-window layers keep only a
window of the cache, so at 32K it stays near 100 MB). Energy: see `energy.py`; every estimate is
labelled as one. The last line of the output is always one JSON document.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

from tinytitan import options

from tinytitan.evaluate import energy
from tinytitan.errors import TinyTitanError
from tinytitan.tables import fixed_row

DEFAULT_CONTEXTS = "1024,4096,16384,32768"


def add_arguments(parser) -> None:
    parser.add_argument("artifacts", nargs="+", metavar="ARTIFACT",
                        help="base | FILE.gguf | BASE.gguf+ADAPTER.gguf | base+ADAPTER.gguf")
    parser.add_argument("--threads", default="1,2", help="thread counts to measure, comma-separated")
    parser.add_argument("--pp", type=options.positive_int, default=512, help="prompt tokens of the prefill test")
    parser.add_argument("--tg", type=options.positive_int, default=128, help="tokens of the decode test")
    parser.add_argument("--repetitions", "-r", type=options.positive_int, default=3, help="runs per test (median)")
    parser.add_argument("--context", default=DEFAULT_CONTEXTS,
                        help="context lengths to fill for context scaling, comma-separated, or 'none'")
    parser.add_argument("--data", default=None, help="a task file whose first prompt times the first token")
    parser.add_argument("--native", action=argparse.BooleanOptionalAction, default=True,
                        help="also run llama.cpp's llama-bench on the same file (where built)")
    parser.add_argument("--profile", action="append", default=None,
                        help="energy profile: laptop, phone, pi, or watts per busy core (repeatable; default: all three)")
    parser.add_argument("--conversation", default="200,100,5",
                        help="conversation shape: new prompt tokens, reply tokens, turns")
    parser.add_argument("--conversations", type=options.positive_int, default=25, help="conversations for battery %%")
    parser.add_argument("--battery-wh", type=float, default=energy.DEFAULT_BATTERY_WH,
                        help="battery capacity in Wh (default: a Pixel 9 Pro class phone)")
    options.add_json(parser)


def _int_list(text: str, flag: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise TinyTitanError(f"{flag}: expected whole numbers >= 1, comma-separated, not {text!r}")
    return values


def run(args) -> None:
    from tinytitan.model.artifacts import parse_artifacts

    threads = _int_list(args.threads, "--threads")
    contexts = [] if args.context == "none" else _int_list(args.context, "--context")
    shape = _int_list(args.conversation, "--conversation")
    if len(shape) != 3:
        raise TinyTitanError(f"--conversation: expected prompt,reply,turns (three numbers), not {args.conversation!r}")
    profiles = [energy.profile(p) for p in (args.profile or list(energy.PROFILES))]
    if args.battery_wh <= 0:
        raise TinyTitanError(f"--battery-wh must be above 0, not {args.battery_wh}")
    artifacts = parse_artifacts(args.artifacts)
    for artifact in artifacts:
        if artifact.kind == "run":
            raise TinyTitanError(f"{artifact.spec}: bench measures llama.cpp artifacts; export the run first "
                                 f"(tinytitan export {artifact.spec})")
    prompt = _task_prompt(args.data)
    results = [bench_artifact(a, threads, args.pp, args.tg, args.repetitions, contexts, prompt, args.native,
                              profiles, shape, args.conversations, args.battery_wh) for a in artifacts]
    report = {"artifacts": results, "machine": {"cpus": energy.cpu_count()}}
    if not args.json:
        print_table(results)
    print(json.dumps(report))


def _task_prompt(data: str | None) -> list[dict]:
    """The conversation whose first token is timed: the first row of `data`, or an ingredient line."""
    if not data:
        return [{"role": "user", "content": "1 1/2 cups all-purpose flour, sifted"}]
    from tinytitan.data.rows import DataSpec
    from tinytitan.evaluate.scoring import load_rows

    return [{"role": m.role, "content": m.content} for m in load_rows(data, DataSpec())[0].messages]


def bench_for_report(artifacts, context: str, data: str, reps: int = 3) -> list[dict]:
    """The report's bench: 2 threads, pp512/tg128, context scaling (`context`, or "none") on the base only,
    the first row of `data` as the timed prompt, every energy profile and the default conversation shape."""
    contexts = [] if context == "none" else _int_list(context, "--context")
    prompt = _task_prompt(data)
    profiles = [energy.profile(p) for p in energy.PROFILES]
    results = []
    for artifact in artifacts:
        scaling = contexts if artifact.is_base else []
        results.append(bench_artifact(artifact, [2], 512, 128, reps, scaling, prompt, True, profiles, [200, 100, 5],
                                      25, energy.DEFAULT_BATTERY_WH))
    return results


def _worker(job: dict) -> dict:
    done = subprocess.run([sys.executable, "-m", "tinytitan.evaluate.bench_worker", json.dumps(job)],
                          capture_output=True, text=True)
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise TinyTitanError(f"{job['artifact']}: the {job['kind']} measurement failed ({tail})")
    return json.loads(lines[-1])


def bench_artifact(artifact, threads, pp, tg, reps, contexts, prompt, native, profiles, shape, conversations,
                   battery_wh) -> dict:
    from tinytitan.progress import progress_bar

    result = {"artifact": artifact.label, "spec": artifact.spec, "size_mb": artifact.size_bytes() / 2**20,
              "pp": pp, "tg": tg, "speed": [], "context": [], "native": None}
    trained = _trained_context(artifact)
    with progress_bar(f"bench {artifact.label}") as progress:
        task = progress.add_task("tests", total=len(threads) + len(contexts) + bool(native))
        for n in threads:
            result["speed"].append(_worker({"kind": "speed", "artifact": artifact.spec, "threads": n, "pp": pp,
                                            "tg": tg, "repetitions": reps, "messages": prompt}))
            progress.advance(task)
        for length in contexts:
            depth = min(length, trained - 32 - 8)
            result["context"].append({"context": length, **_worker(
                {"kind": "depth", "artifact": artifact.spec, "threads": max(threads), "depth": depth, "tg": 32})})
            progress.advance(task)
        if native:
            result["native"] = native_bench(artifact, threads, pp, tg, reps)
            progress.advance(task)
    best = max(result["speed"], key=lambda s: s["threads"])
    result["peak_rss_mb"] = max(s["peak_rss_mb"] for s in result["speed"])
    result["energy"] = energy_figures(best, profiles, shape, conversations, battery_wh)
    return result


def _trained_context(artifact) -> int:
    from tinytitan.model.registry import resolve

    value = resolve(str(artifact.path) if artifact.path else None).gguf.arch_key("context_length")
    return int(value) if value else 32768


def energy_figures(speed: dict, profiles, shape, conversations, battery_wh) -> dict:
    """J/token and J/conversation from the CPU-seconds of the pp and tg tests (and RAPL if read)."""
    prompt_tokens, reply_tokens, turns = shape
    figures = {"threads": speed["threads"], "estimates": []}
    for device in profiles:
        prefill = speed["cpu_s_per_prefill_token"] * device.watts_per_core
        decode = speed["cpu_s_per_decode_token"] * device.watts_per_core
        figures["estimates"].append({
            "profile": device.name, "estimate": True,
            "assumes": f"{device.watts_per_core:g} W per busy core ({device.note}) x this machine's CPU-seconds",
            "j_per_prefill_token": prefill, "j_per_decode_token": decode,
            "conversation": energy.per_conversation(prefill, decode, prompt_tokens, reply_tokens, turns,
                                                    battery_wh, conversations)})
    if speed.get("rapl_j_per_decode_token") is not None:
        prefill, decode = speed["rapl_j_per_prefill_token"], speed["rapl_j_per_decode_token"]
        figures["measured"] = {
            "source": f"RAPL {', '.join(speed['rapl_domains'])} (whole CPU package, this machine)",
            "j_per_prefill_token": prefill, "j_per_decode_token": decode,
            "conversation": energy.per_conversation(prefill, decode, prompt_tokens, reply_tokens, turns,
                                                    battery_wh, conversations)}
    else:
        figures["measured"] = None
        figures["why_not_measured"] = "no readable RAPL counter under /sys/class/powercap on this machine"
    return figures


def native_bench(artifact, threads, pp, tg, reps) -> dict | None:
    """llama.cpp's llama-bench on the same model file (adapters: not supported by llama-bench)."""
    from tinytitan.model.registry import resolve
    from tinytitan.export.native_tools import tools_dir

    binary = tools_dir() / "bin" / "llama-bench"
    if not binary.exists():
        return {"error": "llama-bench is not built (python -m tinytitan.export.native_tools builds it)"}
    if artifact.adapter is not None:
        return {"error": "llama-bench cannot apply a LoRA adapter"}
    model = resolve(str(artifact.path) if artifact.path else None).path
    done = subprocess.run([str(binary), "-m", str(model), "-p", str(pp), "-n", str(tg), "-r", str(reps),
                           "-t", ",".join(map(str, threads)), "-o", "json"], capture_output=True, text=True)
    if done.returncode != 0:
        return {"error": (done.stderr.strip().splitlines() or ["failed"])[-1]}
    rows = json.loads(done.stdout)
    out = {}
    for row in rows:
        test = f"pp{row['n_prompt']}" if row["n_prompt"] else f"tg{row['n_gen']}"
        out[f"{test}_t{row['n_threads']}"] = row["avg_ts"]
    return out


def print_table(results: list[dict]) -> None:
    widths = [-30, 7, 3, 8, 7, 8, 7, 14]
    header = ["artifact", "MB", "thr", "pp t/s", "tg t/s", "TTFT ms", "RSS MB", "native pp/tg"]
    print(fixed_row(header, widths))
    for r in results:
        for s in r["speed"]:
            native = r["native"] if r["native"] and "error" not in r["native"] else {}
            pp = next((v for k, v in native.items() if k.startswith("pp") and k.endswith(f"_t{s['threads']}")), None)
            tg = next((v for k, v in native.items() if k.startswith("tg") and k.endswith(f"_t{s['threads']}")), None)
            nat = f"{pp:.0f}/{tg:.1f}" if pp and tg else "-"
            ttft = f"{1000 * s['ttft_s']:.0f}" if s["ttft_s"] else "-"
            print(fixed_row([r["artifact"], f"{r['size_mb']:.1f}", str(s["threads"]), f"{s['pp_tps']:.1f}",
                             f"{s['tg_tps']:.1f}", ttft, f"{s['peak_rss_mb']:.0f}", nat], widths))
        for c in r["context"]:
            print(f"  context {c['depth']:>6} tokens: prefill {c['prefill_s']:6.1f} s ({c['prefill_tps']:.0f} t/s), "
                  f"decode {c['decode_tps']:.1f} t/s, KV {c['kv_mb']:.0f} MB, RSS {c['peak_rss_mb']:.0f} MB")
        for e in r["energy"]["estimates"]:
            conv = e["conversation"]
            print(f"  energy (estimate, {e['profile']}): {e['j_per_decode_token']:.3f} J/decoded token, "
                  f"{conv['joules']:.1f} J per conversation, {conv['conversations']} conversations = "
                  f"{conv['battery_percent']:.2f}% of {conv['battery_wh']:g} Wh")
        if r["energy"]["measured"]:
            m = r["energy"]["measured"]
            print(f"  energy (measured, {m['source']}): {m['j_per_decode_token']:.3f} J/decoded token")
