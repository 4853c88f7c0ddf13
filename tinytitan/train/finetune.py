"""`tinytitan finetune [RECIPE]`: LoRA or full fine-tuning of a Gemma 3 GGUF on a CPU.

What makes it fast and safe on a laptop:
- the loss is taken on completion tokens only, and the 262,144-wide LM head runs only at the
  positions that predict them, in chunks (`loss.py`);
- bf16 autocast where the CPU supports it, fp32 master weights (fp32 everywhere as a fallback);
- length-bucketed batches filled by tokens: little padding, few tensor shapes (`batching.py`);
- validation every `eval_every` steps, early stopping, the best checkpoint kept apart;
- atomic checkpoints with optimizer, scheduler, RNG and data position; `--resume` continues from
  the newest complete one and reproduces the uninterrupted loss curve (`checkpoint.py`);
- the same entry point runs under `torchrun --nproc_per_node=N` with DDP (gloo on CPU, NCCL on
  GPU): each micro-batch is shared out across processes, the loss normalized by the tokens of the
  whole micro-batch, so N processes compute what one would.

The run folder: config.json, data_fingerprint.json, metrics.jsonl, loss.png, checkpoints/, and
best/ + last/ (a PEFT adapter: adapter_model.safetensors + adapter_config.json, or full weights).
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from tinytitan.train import checkpoint
from tinytitan.train.batching import collate, loss_tokens, plan_epoch, real_tokens
from tinytitan.train.config import FinetuneConfig, add_config_flags, build_config
from tinytitan.train.head import head_rows_for, load_negatives
from tinytitan.model.engines import peak_memory_mb
from tinytitan.errors import TinyTitanError
from tinytitan.files import FolderLock, write_json, write_text
from tinytitan.train.training import (Distributed, CompletionLoss, build_model, causal_lm, check_train_layers,
                                      make_scheduler, save_weights, trainable_state, load_trainable_state, use_bf16)

# keys that may change between a run and its resumption: they do not change the weights' updates.
# (threads may: a resume bit-identical to the uninterrupted run needs the same number of threads.)
class CannotResume(TinyTitanError):
    """The run folder cannot be continued as it is: its settings, data or model changed, or it holds no complete
    checkpoint. (Any other error while resuming, a full disk say, leaves the run to be resumed once it is fixed.)"""


RESUMABLE_CHANGES = {"early_stopping", "time_limit", "save_every", "keep_checkpoints", "threads", "output"}


def add_arguments(parser) -> None:
    parser.add_argument("recipe", nargs="?", default=None, help="a recipe file (.toml or .yaml)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in --output from its newest complete checkpoint")
    add_config_flags(parser)


def run(args) -> None:
    config = build_config(args.recipe, args)
    if not config.train:
        raise TinyTitanError("no training data: give `train` in the recipe or --train FILE")
    if int(os.environ.get("RANK", "0")):  # another process of a torchrun: the first holds the lock for all
        result = train(config, resume=args.resume)
    else:
        with FolderLock(Path(config.output), "finetune"):  # one writer per run folder
            result = train(config, resume=args.resume)
    if result.is_main:
        print(json.dumps(result.summary))


@dataclass
class RunResult:
    summary: dict
    is_main: bool


@dataclass
class Position:
    step: int = 0
    epoch: int = 0
    batch: int = 0  # micro-batches of the current epoch already done
    best_val: float = math.inf
    best_step: int = 0
    bad_evals: int = 0
    tokens: int = 0
    stopped_early: bool = False
    seconds: float = 0.0  # of training so far, across resumptions (`time_limit`)
    timed_out: bool = False


def train(config: FinetuneConfig, resume: bool = False) -> RunResult:
    from tinytitan.data.check import prepare_data
    from tinytitan.model.registry import resolve
    from tinytitan.model.torch_model import decoder_layers, load_tokenizer

    dist = Distributed.setup(config.threads)
    run_dir = Path(config.output)
    ref = resolve(config.model)
    tokenizer = load_tokenizer(ref)
    prepared = prepare_data(config, tokenizer)
    train_set, val_set = prepared.splits["train"], prepared.splits["val"]
    fingerprint = {**prepared.fingerprint, "model_sha256": ref.sha256}
    check_train_layers(config, decoder_layers(ref))
    _check_run_dir(run_dir, config, fingerprint, resume)  # every process: all fail alike, none waits
    dist.barrier()  # all have looked before the first one writes
    if dist.is_main:
        _create_run_dir(run_dir, config, fingerprint)
    dist.barrier()

    teacher = _teacher(config, train_set, ref, dist)
    torch.manual_seed(config.seed)
    bf16 = use_bf16(config.precision)
    model = build_model(ref, config, dist.device)
    loss_module = CompletionLoss(model, bf16=bf16, head_chunk=config.head_chunk,
                                 negatives=load_negatives(config, model), kd_weight=config.kd_weight,
                                 kd_temperature=config.kd_temperature, kd_divergence=config.kd_divergence,
                                 head_rows=head_rows_for(config, model, train_set + val_set, bf16, dist.is_main),
                                 frozen=_frozen(config, model, train_set))
    wrapped = dist.wrap(loss_module)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay)
    per_epoch = len(plan_epoch(train_set, config.batch_tokens, config.max_length, config.seed, 0, dist.world))
    steps_per_epoch = math.ceil(per_epoch / config.grad_accum)
    total_steps = config.max_steps or math.ceil(config.epochs * steps_per_epoch)
    scheduler = make_scheduler(optimizer, config, total_steps)

    pos = Position()
    if resume:
        pos = _restore(run_dir, model, optimizer, scheduler, loss_module)
        pos.timed_out = False  # a longer time_limit may continue it
    metrics = _Metrics(run_dir / "metrics.jsonl", dist.is_main, truncate_after=pos.step if resume else 0)
    if dist.is_main:
        trainable = sum(p.numel() for p in params)
        print(f"fine-tuning {ref.name} ({config.method}, {trainable / 1e6:.2f} M trainable, "
              f"{'bf16' if bf16 else 'fp32'}, {dist.world} process{'es' if dist.world > 1 else ''}): "
              f"{len(train_set)} train / {len(val_set)} val rows, {total_steps} steps"
              + (f", resuming at step {pos.step}" if pos.step else ""), flush=True)

    start_time = time.perf_counter()
    trained_before = pos.seconds
    plans: dict[int, list] = {}
    with _progress(dist.is_main, total_steps, pos.step) as progress:
        while pos.step < total_steps and not pos.stopped_early and not pos.timed_out:
            plan = plans.setdefault(pos.epoch, plan_epoch(train_set, config.batch_tokens, config.max_length,
                                                          config.seed, pos.epoch, dist.world))
            micro = plan[pos.batch:pos.batch + config.grad_accum]
            step_start = time.perf_counter()
            loss_sum = _train_step(wrapped, dist, train_set, micro, tokenizer.token_id("<pad>") or 0,
                                   params, optimizer, config.max_grad_norm, teacher)
            scheduler.step()
            step_loss_tokens = sum(loss_tokens(train_set, b) for b in micro)
            step_tokens = sum(real_tokens(train_set, b) for b in micro)
            pos.step += 1
            pos.tokens += step_tokens
            pos.batch += len(micro)
            if pos.batch >= len(plan):
                pos.epoch, pos.batch = pos.epoch + 1, 0
                plans.pop(pos.epoch - 1, None)
            elapsed = time.perf_counter() - step_start
            record = {"step": pos.step, "epoch": round(pos.epoch + pos.batch / len(plan), 4),
                      "loss": loss_sum / step_loss_tokens, "lr": scheduler.get_last_lr()[0], "tokens": pos.tokens,
                      "tokens_per_second": step_tokens / elapsed, "peak_rss_mb": peak_memory_mb()}
            metrics.write(record)
            progress(pos.step, record)
            pos.seconds = trained_before + time.perf_counter() - start_time
            # every process ends at the same step: stop when any one of them is past the limit
            pos.timed_out = bool(config.time_limit) and pos.step < total_steps and \
                dist.sum(torch.tensor(float(pos.seconds >= config.time_limit))) > 0
            last = pos.step == total_steps or pos.timed_out
            if val_set and (pos.step % config.eval_every == 0 or last):
                _evaluate_and_keep_best(wrapped, dist, val_set, config, tokenizer, model, run_dir, pos, metrics,
                                        last=last)
            if pos.timed_out and dist.is_main:
                print(f"step {pos.step}: the time limit ({config.time_limit:.0f} s of training) is reached - "
                      f"stopping with {total_steps - pos.step} of {total_steps} steps left", flush=True)
            if pos.step % config.save_every == 0 or last or pos.stopped_early:
                _save_checkpoint(run_dir, dist, model, optimizer, scheduler, pos, config, loss_module)
    if dist.is_main:
        save_weights(model, run_dir / "last", {"step": pos.step, "base_model": str(ref.path),
                                               "base_sha256": ref.sha256, "method": config.method})
        if not val_set or config.keep == "last":  # no validation (the last are the best we know), or asked for
            save_weights(model, run_dir / "best", {"step": pos.step, "base_model": str(ref.path),
                                                   "base_sha256": ref.sha256, "method": config.method})
        _plot(run_dir)
    summary = {"run": str(run_dir), "steps": pos.step, "epochs": round(pos.epoch + pos.batch / max(per_epoch, 1), 3),
               "best_val_loss": None if math.isinf(pos.best_val) else pos.best_val, "best_step": pos.best_step,
               "stopped_early": pos.stopped_early, "timed_out": pos.timed_out, "tokens": pos.tokens,
               "seconds": round(time.perf_counter() - start_time, 1)}
    if loss_module.head_rows is not None:
        summary["softmax_tokens"] = int(loss_module.head_rows.numel())  # the task softmax at the end
    dist.barrier()
    dist.close()
    return RunResult(summary, dist.is_main)


def _frozen(config: FinetuneConfig, model, train_set):
    """`train_layers`: the frozen layers below the trained ones, run once per training row (train/frozen.py)."""
    if not config.train_layers or (config.method == "full" and config.train_embeddings):  # (trained inputs)
        return None
    from tinytitan.train.frozen import FrozenLayers

    lm = causal_lm(model)
    return FrozenLayers(lm, lm.config.num_hidden_layers - config.train_layers, sum(len(e.ids) for e in train_set))


def _teacher(config, train_set, ref, dist):
    """The distillation teacher's rows for the training set (none without `teacher`): the main process
    computes them (or reads them cached), the others then read the cache."""
    if not config.teacher or not config.kd_weight:  # (a teacher that only labelled inputs: `distill`)
        return None
    from tinytitan.train.teacher import load_teacher

    def load():
        return load_teacher(config.teacher, train_set, ref.gguf, config.kd_top_k, config.threads or None,
                            student=f"student {ref.name}", dtype=config.kd_dtype)

    teacher = load() if dist.is_main else None
    dist.barrier()
    return teacher or load()


def _train_step(wrapped, dist, dataset, micro, pad_id, params, optimizer, max_grad_norm, teacher=None) -> float:
    """One optimizer step over `micro` micro-batches; returns the summed loss of the whole step (with a
    teacher, the cross-entropy plus the distillation term)."""
    total_tokens = sum(loss_tokens(dataset, b) for b in micro)
    loss_sum = 0.0
    for index, batch in enumerate(micro):
        ids, attention, mask = (t.to(dist.device) for t in collate(dataset, batch, pad_id, dist.rank, dist.world))
        with dist.no_sync(wrapped, last=index == len(micro) - 1):
            local = wrapped(ids, attention, mask, *(teacher.rows(batch.examples, dist.rank, dist.world)
                                                    if teacher else (None, None)),
                            rows=batch.examples[dist.rank::dist.world])
            # DDP averages gradients over processes: scale by world size to get the sum
            (local * (dist.world / max(total_tokens, 1))).backward()
        loss_sum += dist.sum(local.detach())
    if max_grad_norm:
        torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss_sum


@torch.no_grad()
def evaluate_loss(wrapped, dist, dataset, config, pad_id: int) -> float:
    plan = plan_epoch(dataset, config.batch_tokens * 2, config.max_length, config.seed, 0, dist.world, shuffle=False)
    total, tokens = 0.0, 0
    for batch in plan:
        ids, attention, mask = (t.to(dist.device) for t in collate(dataset, batch, pad_id, dist.rank, dist.world))
        total += dist.sum(wrapped(ids, attention, mask))
        tokens += loss_tokens(dataset, batch)
    return total / max(tokens, 1)


def _evaluate_and_keep_best(wrapped, dist, val_set, config, tokenizer, model, run_dir, pos, metrics,
                            last: bool = False) -> None:
    wrapped.eval()
    val = evaluate_loss(wrapped, dist, val_set, config, tokenizer.token_id("<pad>") or 0)
    wrapped.train()
    improved = val < pos.best_val
    if improved:
        pos.best_val, pos.best_step, pos.bad_evals = val, pos.step, 0
        if dist.is_main:
            save_weights(model, run_dir / "best", {"step": pos.step, "val_loss": val, "method": config.method})
    else:
        pos.bad_evals += 1
        # patience running out at the last step stops nothing: the run ends there anyway
        pos.stopped_early = bool(config.early_stopping) and pos.bad_evals >= config.early_stopping and not last
    metrics.write({"step": pos.step, "val_loss": val, "best": improved})
    if dist.is_main:
        print(f"step {pos.step}: val loss {val:.4f}" + (" (best)" if improved else "") +
              (" - stopping early" if pos.stopped_early else ""), flush=True)


def _save_checkpoint(run_dir, dist, model, optimizer, scheduler, pos: Position, config, loss_module) -> None:
    if not dist.is_main:
        dist.barrier()
        return
    tensors = {f"model.{k}": v for k, v in trainable_state(model).items()}
    optimizer_tensors, optimizer_meta = checkpoint.optimizer_to_flat(optimizer)
    tensors.update(optimizer_tensors)
    tensors["rng.torch"] = torch.get_rng_state()
    if loss_module.head_rows is not None:  # the task softmax with the tokens mined so far
        tensors["head.rows"] = loss_module.head_rows
    scheduler_state = {k: v for k, v in scheduler.state_dict().items() if k != "lr_lambdas"}
    state = {"position": pos.__dict__, "optimizer": optimizer_meta, "scheduler": scheduler_state}
    checkpoint.save(run_dir / "checkpoints", pos.step, tensors, state, config.keep_checkpoints)
    dist.barrier()


def _restore(run_dir: Path, model, optimizer, scheduler, loss_module) -> Position:
    if checkpoint.latest(run_dir / "checkpoints") is None:
        raise CannotResume(f"{run_dir}: no complete checkpoint to resume from")
    tensors, state = checkpoint.load_latest(run_dir / "checkpoints")
    load_trainable_state(model, {k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    checkpoint.optimizer_from_flat(optimizer, tensors, state["optimizer"])
    scheduler.load_state_dict({**scheduler.state_dict(), **state["scheduler"]})
    torch.set_rng_state(tensors["rng.torch"])
    if loss_module.head_rows is not None and "head.rows" in tensors:
        loss_module.keep_in_head(tensors["head.rows"])
    return Position(**state["position"])


def _check_run_dir(run_dir: Path, config: FinetuneConfig, fingerprint: dict, resume: bool) -> None:
    saved = run_dir / "config.json"
    if not resume:
        if saved.exists():
            raise TinyTitanError(f"{run_dir}: a run already exists there; pass --resume to continue it "
                                 f"or choose another --output")
        return
    if not saved.exists():
        raise CannotResume(f"{run_dir}: nothing to resume (no config.json)")
    before = json.loads(saved.read_text())
    changed = sorted(k for k, v in config.as_dict().items() if k not in RESUMABLE_CHANGES
                     and before.get(k, _default(k)) != v)  # a key newer than the run's config.json: its default
    if changed:
        raise CannotResume(f"{run_dir}: cannot resume with a different {changed[0]} "
                             f"(was {before.get(changed[0])!r}, now {getattr(config, changed[0])!r})")
    try:
        old = json.loads((run_dir / "data_fingerprint.json").read_text())
    except (OSError, ValueError):
        old = {}
    same = {k: old.get(k) for k in ("tokens_sha256", "model_sha256")} == \
        {k: fingerprint[k] for k in ("tokens_sha256", "model_sha256")}
    if not same:
        raise CannotResume(f"{run_dir}: cannot resume: the data or the model changed since the run started "
                             f"(data_fingerprint.json differs)")


def _default(key: str):
    import dataclasses

    spec = dataclasses.fields(FinetuneConfig)[[f.name for f in dataclasses.fields(FinetuneConfig)].index(key)]
    return spec.default if spec.default is not dataclasses.MISSING else spec.default_factory()


def _create_run_dir(run_dir: Path, config: FinetuneConfig, fingerprint: dict) -> None:
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise TinyTitanError(f"cannot create the run folder {run_dir}: {error.strerror or error}") from None
    write_json(run_dir / "config.json", config.as_dict(), indent=2)
    write_json(run_dir / "data_fingerprint.json", fingerprint, indent=2)


class _Metrics:
    """metrics.jsonl, appended line by line; on resume, lines after the checkpoint are dropped
    (they are recomputed), as is a half-written last line."""

    def __init__(self, path: Path, enabled: bool, truncate_after: int):
        self.path, self.enabled = path, enabled
        if enabled and truncate_after and path.exists():
            kept = []
            for line in path.read_text().splitlines():
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                if record.get("step", 0) <= truncate_after:
                    kept.append(line)
            write_text(path, "".join(line + "\n" for line in kept))  # a kill here keeps the old lines
        elif enabled and not truncate_after:
            write_text(path, "")

    def write(self, record: dict) -> None:
        if self.enabled:
            try:
                with open(self.path, "a") as file:
                    file.write(json.dumps(record) + "\n")
            except OSError as error:
                raise TinyTitanError(f"cannot write {self.path}: {error.strerror or error} (the last "
                                     f"checkpoint is intact; free space and resume with --resume)") from None


def _progress(enabled: bool, total: int, done: int):
    from contextlib import contextmanager

    from tinytitan.progress import progress_bar

    @contextmanager
    def bar():
        if not enabled:
            yield lambda step, record: None
            return
        with progress_bar("finetune") as progress:
            task = progress.add_task("steps", total=total, completed=done, note="")

            def update(step, record):
                progress.update(task, completed=step,
                                note=f"loss {record['loss']:.4f}  {record['tokens_per_second']:.0f} tok/s")
            yield update

    return bar()


def _plot(run_dir: Path) -> None:
    from tinytitan.report.plots import loss_curve

    try:
        loss_curve(run_dir / "metrics.jsonl", run_dir / "loss.png")
    except OSError as error:
        raise TinyTitanError(f"cannot write {run_dir / 'loss.png'}: {error.strerror or error}") from None
