"""Fine-tuning on the tiny model: run folder, golden loss curve, kill -9 and resume, torchrun/DDP,
recipe handling. (The 270M runs are in bench/finetune.py and bench/finetune_quality.py.)"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, run_cli

# Expected training losses of the golden run below (fp32, seed 0). If a change to the loop moves
# them, the change altered the computation: explain why in the commit, then update these numbers.
GOLDEN = [6.821285, 6.851467, 6.626029, 6.588166, 6.363767, 6.284013, 6.166129, 6.008544]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    rng = random.Random(0)
    words = ["cat", "dog", "red", "blue", "salt", "sugar", "cup", "one", "two", "mat"]
    path = tmp_path_factory.mktemp("ft") / "pairs.jsonl"
    with open(path, "w") as file:
        for i in range(240):
            a, b = rng.choice(words), rng.choice(words)
            file.write(json.dumps({"prompt": f"{a} and {b} {i}", "completion": {"first": a, "second": b}}) + "\n")
    return path


def finetune_args(tiny, dataset, output, *extra):
    return ["finetune", "--model", str(tiny[0]), "--train", str(dataset), "--output", str(output),
            "--batch-tokens", "256", "--learning-rate", "1e-3", "--precision", "fp32", "--threads", "1", *extra]


def losses(run: Path) -> list[float]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in records if "loss" in r]


def test_run_folder_and_peft_adapter(tiny, dataset, tmp_path):
    run = tmp_path / "run"
    result = run_cli(*finetune_args(tiny, dataset, run, "--max-steps", "12", "--eval-every", "4", "--save-every", "4"))
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["steps"] == 12 and summary["best_val_loss"] is not None
    for name in ("config.json", "data_fingerprint.json", "metrics.jsonl", "loss.png", "best/adapter_config.json",
                 "best/adapter_model.safetensors", "last/adapter_model.safetensors"):
        assert (run / name).exists(), name
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-0000008", "step-0000012"]
    fingerprint = json.loads((run / "data_fingerprint.json").read_text())
    assert sum(fingerprint["counts"].values()) == 240 and fingerprint["split_mode"] == "hash"
    # the adapter loads with PEFT on the base model
    from peft import PeftModel

    from tinytitan.model.registry import resolve
    from tinytitan.model.torch_model import load_torch_model

    model = PeftModel.from_pretrained(load_torch_model(resolve(str(tiny[0]))), str(run / "best"))
    assert any("lora_A" in name for name, _ in model.named_parameters())
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    val = [r["val_loss"] for r in records if "val_loss" in r]
    assert len(val) == 3 and val[0] > val[1] > val[2]  # it learns, and validation sees it


def test_a_time_limit_ends_the_run_as_its_last_step_would(tiny, dataset, tmp_path):
    """`run --budget` sets one: past it, the run validates, keeps the best and checkpoints, as at its last step."""
    run = tmp_path / "limited"
    result = run_cli(*finetune_args(tiny, dataset, run, "--max-steps", "40", "--eval-every", "100", "--save-every",
                                    "100", "--time-limit", "0.001"))
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["timed_out"] and summary["steps"] == 1 and summary["best_val_loss"] is not None
    assert "the time limit (0 s of training) is reached - stopping with 39 of 40 steps left" in result.stdout
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step-0000001"] and (run / "best").is_dir()
    longer = run_cli(*finetune_args(tiny, dataset, run, "--max-steps", "40", "--eval-every", "100", "--save-every",
                                    "100", "--time-limit", "0", "--resume"))  # a longer limit continues it
    assert longer.returncode == 0, longer.stderr
    assert json.loads(longer.stdout.strip().splitlines()[-1])["steps"] == 40


def test_keep_last_exports_the_weights_at_the_end(tiny, dataset, tmp_path):
    """best/ is what gets exported: with keep = last the weights at the end of the schedule are written there
    when the run ends, not those of the lowest validation loss (written when it was measured)."""
    from safetensors.torch import load_file

    result = run_cli(*finetune_args(tiny, dataset, tmp_path / "r", "--max-steps", "6", "--eval-every", "2",
                                    "--keep", "last"))
    assert result.returncode == 0, result.stderr
    best, last = (load_file(tmp_path / "r" / f / "adapter_model.safetensors") for f in ("best", "last"))
    assert best.keys() == last.keys() and all(best[k].equal(last[k]) for k in best)
    info = json.loads((tmp_path / "r" / "best" / "tinytitan.json").read_text())
    assert info["step"] == 6 and "val_loss" not in info and "base_sha256" in info  # the end-of-run write
    kept = run_cli(*finetune_args(tiny, dataset, tmp_path / "k", "--max-steps", "6", "--eval-every", "2"))
    assert kept.returncode == 0 and "val_loss" in json.loads((tmp_path / "k" / "best" / "tinytitan.json").read_text())
    bad = run_cli(*finetune_args(tiny, dataset, tmp_path / "b", "--keep", "first"))
    assert bad.returncode == 1 and "keep: 'first' is not valid (expected best | last)" in bad.stderr


def test_golden_loss_curve(tiny, dataset, tmp_path):
    run = tmp_path / "golden"
    result = run_cli(*finetune_args(tiny, dataset, run, "--max-steps", "8", "--eval-every", "100"))
    assert result.returncode == 0, result.stderr
    curve = losses(run)
    assert len(curve) == 8
    assert curve == pytest.approx(GOLDEN, rel=1e-4), curve


def test_resume_after_kill_gives_the_same_curve(tiny, dataset, tmp_path):
    common = ("--max-steps", "40", "--eval-every", "10", "--save-every", "3")
    straight = tmp_path / "straight"
    assert run_cli(*finetune_args(tiny, dataset, straight, *common)).returncode == 0
    killed = tmp_path / "killed"
    kill_after = random.Random().randint(4, 30)
    process = subprocess.Popen([sys.executable, "-m", "tinytitan", *finetune_args(tiny, dataset, killed, *common)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    metrics = killed / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and process.poll() is None:
        if metrics.exists() and len(losses_prefix(metrics)) >= kill_after:
            break
        time.sleep(0.005)
    assert process.poll() is None, "the run ended before it could be killed"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    steps_before = len(losses_prefix(metrics))
    assert steps_before < 40
    resumed = run_cli(*finetune_args(tiny, dataset, killed, *common, "--resume"))
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming at step" in resumed.stdout
    assert losses(killed) == pytest.approx(losses(straight), rel=1e-6, abs=1e-7)
    assert len(losses(killed)) == 40


def losses_prefix(metrics: Path) -> list[float]:
    out = []
    for line in metrics.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            break
        if "loss" in record:
            out.append(record["loss"])
    return out


def test_torchrun_two_processes_match_one(tiny, dataset, tmp_path):
    common = ("--max-steps", "6", "--eval-every", "3", "--save-every", "100")
    single = tmp_path / "single"
    assert run_cli(*finetune_args(tiny, dataset, single, *common)).returncode == 0
    double = tmp_path / "double"
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port",
                             str(29500 + os.getpid() % 1000), "-m", "tinytitan",
                             *finetune_args(tiny, dataset, double, *common)],
                            capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "2 processes" in result.stdout
    assert losses(double) == pytest.approx(losses(single), rel=1e-4)

    def val(run):
        lines = (run / "metrics.jsonl").read_text().splitlines()
        return [json.loads(line)["val_loss"] for line in lines if "val_loss" in line]

    assert val(double) == pytest.approx(val(single), rel=1e-4)


def test_recipe_keys_flags_and_errors(tiny, dataset, tmp_path):
    recipe = tmp_path / "r.toml"
    recipe.write_text(f'# tinytitan finetune {recipe}\noutput = "{tmp_path / "from_recipe"}"\n[task]\n'
                      f'train = "{dataset}"\n[finetune]\nmodel = "{tiny[0]}"\nlora_rank = 4\nmax_steps = 2\n'
                      f'precision = "fp32"\n')
    result = run_cli("finetune", str(recipe), "--lora-rank", "2")  # the flag wins over the recipe
    assert result.returncode == 0, result.stderr
    config = json.loads((tmp_path / "from_recipe" / "train" / "config.json").read_text())  # where `run` trains
    assert config["lora_rank"] == 2 and config["max_steps"] == 2
    again = run_cli("finetune", str(recipe))
    assert again.returncode == 1 and "a run already exists there; pass --resume" in again.stderr
    changed = run_cli("finetune", str(recipe), "--lora-rank", "8", "--resume")
    assert changed.returncode == 1 and "cannot resume with a different lora_rank (was 2, now 8)" in changed.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("# tinytitan finetune bad.yaml\ntask:\n  train: x.jsonl\nfinetune:\n  lora_rnak: 8\n")
    result = run_cli("finetune", str(bad))
    assert result.returncode == 1 and result.stderr.strip() == f"error: {bad}: [finetune] unknown key 'lora_rnak' " \
        "(see `tinytitan finetune --help`)"
    typo = tmp_path / "typo.yaml"
    typo.write_text("# tinytitan finetune typo.yaml\ntask:\n  train: x.jsonl\nfinetune:\n  epochs: many\n")
    result = run_cli("finetune", str(typo))
    assert result.returncode == 1 and result.stderr.strip() == f"error: {typo}: epochs = 'many' is not a number"
    result = run_cli("finetune", "--epochs", "1")
    assert result.returncode == 1 and "no training data" in result.stderr
    for flags, message in [(("--epochs", "-1"), "epochs: -1.0 is not valid"),
                           (("--method", "qlora"), "method: 'qlora' is not valid (expected lora | full)"),
                           (("--lora-rank", "x"), "--lora-rank: 'x' is not a whole number"),
                           (("--time-limit", "-5"), "time_limit: -5.0 is not valid (expected seconds >= 0"),
                           (("--lora-targets", "q_proj,foo"), "lora_targets: ['foo'] not allowed")]:
        result = run_cli("finetune", "--train", str(dataset), *flags)
        assert result.returncode == 1 and message in result.stderr and result.stderr.count("\n") == 1, result.stderr


def test_full_finetune_saves_weights(tiny, dataset, tmp_path):
    run = tmp_path / "full"
    result = run_cli(*finetune_args(tiny, dataset, run, "--method", "full", "--max-steps", "3", "--learning-rate",
                                    "1e-4", "--eval-every", "3"))
    assert result.returncode == 0, result.stderr
    assert (run / "best" / "model.safetensors").exists() and (run / "best" / "config.json").exists()


def test_unwritable_output_is_one_line(tiny, dataset, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    result = run_cli(*finetune_args(tiny, dataset, blocker / "run", "--max-steps", "1"))
    assert result.returncode == 1
    assert result.stderr.strip() == f"error: cannot create the run folder {blocker / 'run'}: Not a directory"


def test_checkpoint_write_failure_keeps_the_previous(tmp_path, monkeypatch):
    import errno

    import safetensors.torch
    import torch

    from tinytitan.train import checkpoint
    from tinytitan.errors import TinyTitanError

    folder = tmp_path / "checkpoints"
    checkpoint.save(folder, 1, {"w": torch.ones(3)}, {"step": 1}, keep=2)

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", full_disk)
    with pytest.raises(TinyTitanError, match="No space left on device; the previous checkpoint step-0000001 is intact"):
        checkpoint.save(folder, 2, {"w": torch.zeros(3)}, {"step": 2}, keep=2)
    assert [p.name for p in folder.iterdir()] == ["step-0000001"]  # no half-written folder left
    tensors, state = checkpoint.load(checkpoint.latest(folder))
    assert state == {"step": 1} and tensors["w"].tolist() == [1, 1, 1]


def test_incomplete_checkpoint_is_ignored(tmp_path):
    import torch

    from tinytitan.train import checkpoint

    folder = tmp_path / "checkpoints"
    checkpoint.save(folder, 1, {"w": torch.ones(2)}, {"step": 1}, keep=3)
    broken = checkpoint.save(folder, 2, {"w": torch.ones(2)}, {"step": 2}, keep=3)
    (broken / "manifest.json").unlink()  # as if killed before the manifest
    assert checkpoint.latest(folder).name == "step-0000001"


def test_example_recipe_is_valid_for_finetune_and_run_alike(tmp_path):
    from tinytitan.train.config import FinetuneConfig, finetune_settings
    from tinytitan.pipeline.recipe import load_recipe

    recipe = ROOT / "examples" / "ingredients-lora.toml"
    assert recipe.read_text().splitlines()[0] == "# tinytitan finetune examples/ingredients-lora.toml"
    config = FinetuneConfig(**finetune_settings(recipe))
    assert config.method == "lora" and config.max_rows == 2000 and config.input_column == "input"
    assert Path(config.train).resolve() == ROOT / "recipes" / "data" / "ingredients" / "tastecooking-ingredients-2024.csv"
    assert config.output == "runs/ingredients-lora/train"  # where `tinytitan run` trains it too
    assert load_recipe(recipe).finetune["lora_rank"] == 16  # one format: `run` reads the same file
    old = tmp_path / "old.toml"  # the sections of the earlier finetune-only format are refused by name
    old.write_text('[data]\ntrain = "x.csv"\n[lora]\nlora_rank = 8\n')
    result = run_cli("finetune", str(old))
    assert result.returncode == 1 and "unknown key or section 'data'" in result.stderr
    built_in = tmp_path / "built-in.toml"
    built_in.write_text('[task]\nkind = "banking77"\ntrain = "a.csv"\ntest = "b.csv"\n')
    result = run_cli("finetune", str(built_in))
    assert result.returncode == 1 and "prepared by `tinytitan run" in result.stderr


def test_non_finite_settings_are_refused(dataset):
    for flags in (("--epochs", "inf"), ("--weight-decay", "nan"), ("--split", "nan,0,0")):
        result = run_cli("finetune", "--train", str(dataset), *flags)
        assert result.returncode == 1 and "a finite number" in result.stderr, result.stderr


def test_resume_refuses_changed_data(tiny, dataset, tmp_path):
    data = tmp_path / "data.jsonl"
    data.write_text(dataset.read_text())
    run = tmp_path / "run"
    assert run_cli(*finetune_args(tiny, data, run, "--max-steps", "2")).returncode == 0
    data.write_text(dataset.read_text().replace('"cat', '"dog'))  # same file, new contents
    result = run_cli(*finetune_args(tiny, data, run, "--max-steps", "2", "--resume"))
    assert result.returncode == 1 and "the data or the model changed" in result.stderr
    longer = run_cli(*finetune_args(tiny, data, run, "--max-steps", "4", "--resume"))
    assert longer.returncode == 1 and "cannot resume with a different max_steps (was 2, now 4)" in longer.stderr


def test_weights_folder_is_replaced_whole_and_damaged_checkpoints_are_skipped(tmp_path, capsys):
    import torch

    from tinytitan.train import checkpoint

    target = tmp_path / "best"
    checkpoint.write_atomic_dir(target, lambda d: (d / "w.txt").write_text("one"))
    checkpoint.write_atomic_dir(target, lambda d: (d / "w.txt").write_text("two"))
    assert (target / "w.txt").read_text() == "two" and checkpoint.is_complete(target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best"]  # nothing left beside it
    folder = tmp_path / "checkpoints"
    checkpoint.save(folder, 1, {"w": torch.ones(2)}, {"step": 1}, keep=3)
    newest = checkpoint.save(folder, 2, {"w": torch.ones(2)}, {"step": 2}, keep=3)
    data = bytearray((newest / "tensors.safetensors").read_bytes())
    data[-1] ^= 0xFF  # same size, different bytes: only the checksum can tell
    (newest / "tensors.safetensors").write_bytes(bytes(data))
    _, state = checkpoint.load_latest(folder)
    assert state == {"step": 1}
    assert "checksum mismatch" in capsys.readouterr().err


def test_train_layers_adapts_only_the_top_layers(tiny, dataset, tmp_path):
    from safetensors.torch import load_file

    run = tmp_path / "top"
    result = run_cli(*finetune_args(tiny, dataset, run, "--train-layers", "1", "--max-steps", "2", "--eval-every", "2"))
    assert result.returncode == 0, result.stderr
    names = load_file(run / "best" / "adapter_model.safetensors").keys()
    layers = {int(name.split(".layers.")[1].split(".")[0]) for name in names}
    assert layers == {1} and len(names) == 2 * 7  # lora_A and lora_B of the 7 projections, the top layer only
    full = tmp_path / "full"
    result = run_cli(*finetune_args(tiny, dataset, full, "--method", "full", "--train-layers", "1", "--max-steps", "2",
                                    "--learning-rate", "1e-3", "--eval-every", "2"))
    assert result.returncode == 0, result.stderr
    from tinytitan.model.registry import resolve
    from tinytitan.model.torch_model import load_torch_model

    before = load_torch_model(resolve(str(tiny[0]))).state_dict()
    after = load_file(full / "best" / "model.safetensors")
    moved = {name for name, value in after.items() if name in before and not value.equal(before[name])}
    assert moved and all(".layers.1." in name or name == "model.norm.weight" for name in moved), sorted(moved)[:4]
    result = run_cli(*finetune_args(tiny, dataset, tmp_path / "bad", "--train-layers", "3"))
    assert result.returncode == 1 and "train_layers: 3 is more than the model's 2 decoder layers" in result.stderr
    assert not (tmp_path / "bad" / "config.json").exists()  # refused before the run is made: a rerun may start it
