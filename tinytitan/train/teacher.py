"""Distillation's teacher: its top-k next-token log-probs at every completion position of the training rows.

The teacher is any llama.cpp artifact of the Gemma 3 family (a GGUF, base + adapter GGUF, or a fine-tuning
run, read through its largest exported GGUF): it scores each training row once, through llama.cpp, and
the top-k ids and log-probs are cached under `$TINYTITAN_HOME/kl/` by the teacher's identity (its files'
paths, sizes and times) and the exact token sequences (`evaluate/kl.reference_topk`), so a second run
reads them and a changed teacher or data computes them again. Ids are mapped into the student's
vocabulary by token text (a student in a task vocabulary keeps a subset; a teacher token it lacks is
dropped and the rest renormalized by the loss). The loss is `train/loss.chunked_head_loss`'s KD term.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from tinytitan.errors import TinyTitanError


@dataclass
class Teacher:
    ids: torch.Tensor  # (positions, k) int64 in the student's vocabulary; -1: a token the student lacks
    logp: torch.Tensor  # (positions, k) float32, or float16 (kd_dtype)
    starts: list[int]  # per training example, its first position (and the end, last)
    label: str

    def rows(self, examples, rank: int = 0, world: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """The teacher's rows for a micro-batch's examples (this process's share), in the order the loss sees
        completion positions: example by example, position by position (`loss.completion_positions`)."""
        index = [row for i in examples[rank::world] if i >= 0 for row in range(self.starts[i], self.starts[i + 1])]
        picked = torch.tensor(index, dtype=torch.long)
        return self.ids[picked], self.logp[picked]


def teacher_artifact(spec: str):
    """The teacher named by `spec`, as an Artifact llama.cpp runs: a GGUF or BASE+ADAPTER.gguf as written; a
    fine-tuning run (or a `tinytitan run` folder) by its largest exported GGUF that passed its gate."""
    from tinytitan.model.artifacts import parse_artifact, run_artifacts

    folder = Path(spec)
    train_dir = folder / "train" if (folder / "train" / "config.json").is_file() else folder
    if (train_dir / "config.json").is_file():
        exported = [a for a in run_artifacts(train_dir) if a.servable and a.kind == "gguf" and not a.vocabulary] \
            if (train_dir / "export").is_dir() else []
        if not exported:
            raise TinyTitanError(f"teacher {spec}: a run without an exported GGUF that passed its gate (the teacher "
                                 f"runs in llama.cpp: `tinytitan export {train_dir} --to gguf` first)")
        return exported[0]
    artifact = parse_artifact(spec)
    if artifact.kind == "run":
        raise TinyTitanError(f"teacher {spec}: expected a GGUF, BASE+ADAPTER.gguf or a run folder")
    return artifact


def vocabulary_map(teacher_tokens: list[str], student_tokens: list[str], teacher: str, student: str) -> np.ndarray:
    """teacher id -> student id (-1 where the student lacks the token). The student's tokens must all be the
    teacher's (the same tokenizer, or a task vocabulary cut from it): otherwise the two models do not spell
    text alike and the teacher's distributions mean nothing to the student."""
    if teacher_tokens == student_tokens:
        return np.arange(len(teacher_tokens), dtype=np.int64)
    index = {piece: i for i, piece in enumerate(teacher_tokens)}
    missing = [piece for piece in student_tokens if piece not in index]
    if missing:
        raise TinyTitanError(f"teacher {teacher}: its vocabulary ({len(teacher_tokens):,} tokens) is not the "
                             f"student's ({student}: {len(student_tokens):,} tokens, {len(missing):,} of them not "
                             f"in the teacher's, e.g. {missing[0]!r}); distillation needs one tokenizer")
    mapping = np.full(len(teacher_tokens), -1, dtype=np.int64)
    for student_id, piece in enumerate(student_tokens):
        mapping[index[piece]] = student_id
    return mapping


def load_teacher(spec: str, dataset, student_gguf, k: int, threads: int | None = None,
                 student: str = "the student", dtype: str = "float32") -> Teacher:
    """The teacher's top-k at the completion positions of `dataset` (TokenizedExamples), from the cache or
    computed now (a progress bar per row), in the student's vocabulary."""
    from tinytitan.evaluate.kl import reference_topk
    from tinytitan.model.registry import resolve
    from tinytitan.progress import progress_bar

    artifact = teacher_artifact(spec)
    teacher_gguf = resolve(str(artifact.path) if artifact.path else None).gguf  # the model (an adapter's base)
    mapping = vocabulary_map(list(teacher_gguf.get("tokenizer.ggml.tokens")),
                             list(student_gguf.get("tokenizer.ggml.tokens")), spec, student)
    sequences = [(example.ids, example.completion_start) for example in dataset]
    longest = max(len(example.ids) for example in dataset)
    engine = None
    try:
        with progress_bar(f"teacher {artifact.label}") as progress:
            bar = progress.add_task("rows", total=len(sequences))
            engine = _LazyEngine(artifact, threads, longest)
            top = reference_topk(engine, sequences, artifact.identity(), k, dtype=dtype,
                                 on_row=lambda done, total: progress.update(bar, completed=done))
    finally:
        if engine is not None:
            engine.close()
    ids = torch.from_numpy(mapping[top["ids"].astype(np.int64)])
    starts = np.concatenate([[0], np.cumsum(top["rows"])]).tolist()
    return Teacher(ids, torch.from_numpy(top["logp"]), starts, artifact.label)  # float16 stays half (loss: .float())


class _LazyEngine:
    """The teacher's llama.cpp engine, opened on the first row it must score (a cached teacher opens none)."""

    def __init__(self, artifact, threads: int | None, longest: int):
        self.artifact, self.threads, self.n_ctx = artifact, threads, max(512, longest + 8)
        self.engine = None

    def score(self, ids, first):
        if self.engine is None:
            self.engine = self.artifact.open(threads=self.threads, n_ctx=self.n_ctx)
        return self.engine.score(ids, first)

    def close(self) -> None:
        if self.engine is not None:
            self.engine.close()


@dataclass
class Labelled:
    rows: list[dict]  # kept: {"prompt", "completion", "confidence"} (a JSON completion as its object)
    dropped: dict  # why the others were left out: {"unsure": n, "unfinished": n, "invalid": n}
    confidences: list[float]  # every input's, kept or not (the teacher's lowest token probability)


def label_inputs(spec: str, inputs: list[str], *, system: str = "", schema: dict | None = None,
                 min_confidence: float = 0.5, max_tokens: int = 256, threads: int | None = None) -> Labelled:
    """The teacher's greedy answers to `inputs` (constrained by `schema`'s grammar for a JSON task, so every
    answer is schema-valid), each kept when the teacher's lowest probability for a token it picked (the end
    of turn included) is at least `min_confidence`: one unsure token is one possibly wrong field. Answers
    that hit `max_tokens` before ending, or (unconstrained) are not the JSON a JSON task needs, are left
    out too; all of it counted."""
    import json

    from tinytitan.data.grammar import schema_to_grammar
    from tinytitan.model.chat_format import Message, encode_chat
    from tinytitan.progress import progress_bar

    artifact = teacher_artifact(spec)
    kept, dropped, confidences = [], {"unsure": 0, "unfinished": 0, "invalid": 0}, []
    engine = artifact.open(threads=threads, n_ctx=2048)
    try:
        with progress_bar(f"teacher {artifact.label} labels") as progress:
            bar = progress.add_task("inputs", total=len(inputs))
            for start in range(0, len(inputs), 64):
                chunk = inputs[start:start + 64]
                prompts = [encode_chat(engine, ([Message("system", system)] if system else [])
                                       + [Message("user", text)]) for text in chunk]
                grammars = [schema_to_grammar(schema, text) for text in chunk] if schema else None
                logprobs: list = []
                answers = engine.generate_greedy_batch(prompts, max_tokens, grammars=grammars, logprobs=logprobs)
                for text, answer, (scores, ended) in zip(chunk, answers, logprobs):
                    confidence = float(np.exp(scores.min())) if len(scores) else 0.0
                    confidences.append(confidence)
                    completion = answer
                    if not ended:  # cut by the budget
                        dropped["unfinished"] += 1
                        continue
                    if schema is not None:
                        try:
                            completion = json.loads(answer)
                        except ValueError:
                            dropped["invalid"] += 1
                            continue
                    if confidence < min_confidence:
                        dropped["unsure"] += 1
                        continue
                    kept.append({"prompt": text, "completion": completion, "confidence": round(confidence, 4),
                                 **({"system": system} if system else {})})
                progress.update(bar, completed=start + len(chunk))
    finally:
        engine.close()
    return Labelled(kept, dropped, confidences)
