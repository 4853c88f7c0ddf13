"""Depth pruning on the tiny model: layers ranked by measured importance, the pruned GGUF runs the same in
both engines and in native llama.cpp, bad input is one line."""

from __future__ import annotations

import json
import subprocess

import pytest
import torch

from tests.conftest import run_cli
from tests.test_finetune import dataset  # noqa: F401  (the shared fixture)


def test_importance_ranks_a_layer_that_does_nothing_last(tiny, dataset):  # noqa: F811
    import copy

    from tinytitan.model.torch_model import load_tokenizer
    from tinytitan.model.registry import resolve
    from tinytitan.data.rows import DataSpec, load_examples
    from tinytitan.data.tokens import tokenize_examples
    from tinytitan.shrink.depth import choose_layers, drop_layers, layer_importance
    from tinytitan.train.batching import collate, plan_epoch

    model = copy.deepcopy(tiny[1]).float()
    with torch.no_grad():  # layer 1 made an identity: its residual branches add nothing
        for module in (model.model.layers[1].self_attn.o_proj, model.model.layers[1].mlp.down_proj):
            module.weight.zero_()
    rows, _ = tokenize_examples(load_tokenizer(resolve(str(tiny[0]))),
                                load_examples(dataset, DataSpec()).examples[:16], 64)
    batches = [collate(rows, b, 0) for b in plan_epoch(rows, 512, 64, 0, 0, shuffle=False)]
    importance = layer_importance(model, batches)
    assert importance[1] == pytest.approx(0.0, abs=1e-6) and importance[0] > 1e-3
    assert choose_layers(importance, 1) == [0]
    pruned = drop_layers(model, [0])
    assert pruned.config.num_hidden_layers == 1 and pruned.config.layer_types == [tiny[1].config.layer_types[0]]
    ids, attention, _ = batches[0]
    with torch.no_grad():  # without the identity layer the model computes what it did
        torch.testing.assert_close(pruned(input_ids=ids, attention_mask=attention).logits,
                                   model(input_ids=ids, attention_mask=attention).logits)


def test_a_pruned_gguf_runs_in_both_engines_and_native_llama(tiny, dataset, tmp_path):  # noqa: F811
    from tinytitan.export.native_tools import find_tool
    from tinytitan.model.engines import load_engine
    from tinytitan.model.gguf import read_gguf

    target = tmp_path / "pruned.gguf"
    result = run_cli("prune", str(tiny[0]), "--data", str(dataset), "--layers", "1", "--rows", "16", "-o",
                     str(target), "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["layers"] == 2 and len(summary["kept"]) == 1 and len(summary["importance"]) == 2
    kept = summary["kept"][0]
    assert kept == max(range(2), key=lambda i: summary["importance"][i])
    g = read_gguf(target)
    assert g.arch_key("block_count") == 1 and g.get("tinytitan.depth.kept") == str(kept)
    torch_engine, llama_engine = load_engine("torch", str(target)), load_engine("llama", str(target), n_ctx=256)
    ids = torch_engine.tokenize("salt and sugar 7")
    torch_logits = torch_engine.score(ids, 1)
    llama_logits = llama_engine.score(ids, 1)
    assert (torch_logits.argmax(-1) == llama_logits.argmax(-1)).mean() == 1.0
    llama_engine.close()
    bench = subprocess.run([str(find_tool("llama-bench")), "-m", str(target), "-p", "16", "-n", "4", "-r", "1",
                            "-t", "2"], capture_output=True, text=True, timeout=300)
    assert bench.returncode == 0 and "tg4" in bench.stdout, bench.stderr


def test_prune_refuses_bad_input_in_one_line(tiny, dataset, tmp_path):  # noqa: F811
    for args, message in ((["--layers", "2"], "--layers 2: the model has 2; keep fewer to prune"),
                          (["--layers", "1", "-o", str(tiny[0])], "that is the model itself")):
        out = args if "-o" in args else [*args, "-o", str(tmp_path / "p.gguf")]
        result = run_cli("prune", str(tiny[0]), "--data", str(dataset), *out)
        assert result.returncode == 1 and message in result.stderr and "Traceback" not in result.stderr, result.stderr
    result = run_cli("prune", str(tmp_path / "nope.gguf"), "--data", str(dataset), "--layers", "1", "-o", "x.gguf")
    assert result.returncode == 1 and "no such file or run folder" in result.stderr
