"""A task vocabulary: the tokens a specialist needs, and a Gemma 3 GGUF re-indexed to hold only them.

Gemma 3 270M is 70% vocabulary: `token_embd.weight` (the tied head too) is 262,144 rows, and a
specialist that writes ingredient records or one of 77 labels uses a few thousand of them. The keep
set (`keep_set`) is:

- every control, user-defined and unknown token the GGUF has (the chat format's `<start_of_turn>`
  and `<end_of_turn>` among them), and all 256 byte tokens (byte fallback spells anything else);
- every token the full tokenizer produces on the task's texts, and every intermediate piece its merge
  procedure passes through to reach them, so that on those texts the trimmed tokenizer makes exactly
  the same pieces (`SentencePiece` merges the adjacent pair whose union is the best-scoring token; a
  merge whose result is kept is never skipped, and every merge it does was available before);
- the `top` most frequent tokens of general English text (the bundled WikiText-2 excerpt), with their
  merge paths, so that unseen inputs still tokenize into words rather than bytes.

`trim_gguf` writes a GGUF that stock llama.cpp runs: tokens, scores and types subset in their
original order (so the first ids, `<pad>` `<eos>` `<bos>` `<unk>`, keep theirs), special-token ids
remapped, `token_embd` rows copied bit for bit from the original quantized blocks (a Q8_0 row is 20
independent 34-byte blocks: no requantization), every other tensor copied byte for byte.
"""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from tinytitan.errors import TinyTitanError
from tinytitan.files import write_json

SPACE = "\u2581"  # SentencePiece's visible space
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6  # llama.cpp's token types
SPECIAL_IDS = ("bos", "eos", "unknown", "padding", "seperator", "cls", "mask", "eot", "eom", "fim_pre", "fim_suf",
               "fim_mid", "fim_pad", "fim_rep", "fim_sep")
DEFAULT_TOP = 4000  # general-English tokens kept (measured: docs/pruning.md)


@dataclass
class Vocab:
    tokens: list[str]
    scores: list[float]
    types: list[int]

    @classmethod
    def from_gguf(cls, g) -> "Vocab":
        """The vocabulary of a GGUFFile (`gguf_files.read_gguf`); one line if it is not SentencePiece-style."""
        model = g.get("tokenizer.ggml.model")
        if model != "llama":
            raise TinyTitanError(f"{g.path}: the tokenizer is {model!r}, not SentencePiece-style ('llama'): a task "
                                 f"vocabulary is made for Gemma 3's")
        tokens, scores, types = (g.get(f"tokenizer.ggml.{k}") for k in ("tokens", "scores", "token_type"))
        if not (tokens and scores is not None and types is not None and len(tokens) == len(scores) == len(types)):
            raise TinyTitanError(f"{g.path}: the tokenizer's tokens, scores and types are missing or differ in length")
        return cls(list(tokens), [float(s) for s in scores], [int(t) for t in types])

    def __len__(self) -> int:
        return len(self.tokens)


class MergeTracer:
    """llama.cpp's SentencePiece (`llm_tokenizer_spm`) tokenization, in Python, recording each piece's
    merge tree: `pieces(text)` -> [(token id or None for byte fallback, the merged pieces that built it)].
    User-defined tokens are cut out of the text first, as llama.cpp does."""

    def __init__(self, vocab: Vocab):
        self.vocab = vocab
        self.ids = {}
        for index, token in enumerate(vocab.tokens):
            self.ids.setdefault(token, index)
        self.user_defined = sorted((t for t, k in zip(vocab.tokens, vocab.types) if k == USER_DEFINED and t),
                                   key=len, reverse=True)
        self.bytes = {int(t[3:5], 16): i for i, (t, k) in enumerate(zip(vocab.tokens, vocab.types))
                      if k == BYTE and len(t) == 6}

    def pieces(self, text: str) -> list[tuple[int, frozenset[int]]]:
        """(token id, ids of the tokens its merges passed through, itself included) of each output piece;
        characters no token holds come out as byte tokens."""
        out = []
        for fragment, special in self._partition(text):
            if special:
                out.append((self.ids[fragment], frozenset({self.ids[fragment]})))
            else:
                out += self._merge(fragment.replace(" ", SPACE))
        return out

    def _partition(self, text: str) -> Iterable[tuple[str, bool]]:
        start = 0
        position = 0
        while position < len(text):
            found = next((t for t in self.user_defined if text.startswith(t, position)), None)
            if found is None:
                position += 1
                continue
            if position > start:
                yield text[start:position], False
            yield found, True
            position += len(found)
            start = position
        if start < len(text):
            yield text[start:], False

    def _merge(self, text: str) -> list[tuple[int, frozenset[int]]]:
        chars = list(text)  # UTF-8 characters: llama.cpp's symbols
        n = len(chars)
        if not n:
            return []
        texts = chars[:]
        sizes = [len(c.encode()) for c in chars]
        trees: list[frozenset[int]] = [frozenset({self.ids[c]}) if c in self.ids else frozenset() for c in chars]
        prev, next_ = list(range(-1, n - 1)), list(range(1, n)) + [-1]
        queue: list = []

        def add(left: int, right: int) -> None:
            if left < 0 or right < 0:
                return
            token = self.ids.get(texts[left] + texts[right])
            if token is None:
                return
            # the highest score first, then the leftmost pair (llama.cpp's comparator)
            heapq.heappush(queue, (-self.vocab.scores[token], left, right, sizes[left] + sizes[right], token))

        for i in range(1, n):
            add(i - 1, i)
        while queue:
            _, left, right, size, token = heapq.heappop(queue)
            if sizes[left] == 0 or sizes[right] == 0 or sizes[left] + sizes[right] != size or next_[left] != right:
                continue
            texts[left] += texts[right]
            sizes[left] += sizes[right]
            sizes[right] = 0
            trees[left] = trees[left] | trees[right] | {token}
            next_[left] = next_[right]
            if next_[right] >= 0:
                prev[next_[right]] = left
            add(prev[left], left)
            add(left, next_[left])
        out, i = [], 0
        while i != -1:
            token = self.ids.get(texts[i])
            if token is not None:
                out.append((token, trees[i]))
            else:  # a character no token holds: its UTF-8 bytes
                out += [(self.bytes[b], frozenset({self.bytes[b]})) for b in texts[i].encode()]
            i = next_[i]
        return out


def keep_set(vocab: Vocab, texts: Iterable[str], *, top: int = DEFAULT_TOP,
             general: Iterable[str] | None = None) -> list[int]:
    """The sorted token ids a specialist of `texts` keeps (see the module's docstring); `general`: the
    general-English lines whose `top` most frequent tokens are kept too (default: the bundled excerpt)."""
    if top < 0:
        raise TinyTitanError(f"--keep-top {top}: expected a whole number >= 0")
    tracer = MergeTracer(vocab)
    keep = {i for i, kind in enumerate(vocab.types) if kind in (CONTROL, USER_DEFINED, UNKNOWN, BYTE)}
    seen = 0
    for text in texts:
        seen += 1
        for _, tree in tracer.pieces(text):
            keep |= tree
    if not seen:
        raise TinyTitanError("no rows to make a task vocabulary from")
    if top:
        for tree in general_ranking(vocab, tracer, general)[:top]:
            keep.update(tree)
    return sorted(keep)


def general_ranking(vocab: Vocab, tracer: MergeTracer, lines: Iterable[str] | None = None) -> list[list[int]]:
    """The tokens of `lines` (default: the bundled general English), most frequent first, each as the ids of
    its merge path (itself included). The bundled text's ranking is cached per vocabulary: tracing it takes
    ~15 s in Python, the same every run."""
    import hashlib
    import inspect

    from tinytitan.files import read_json

    cache = None
    if lines is None:
        key = hashlib.sha256()
        for part in ("\0".join(vocab.tokens), repr(vocab.scores), repr(vocab.types), _ENGLISH.read_text("utf-8"),
                     inspect.getsource(MergeTracer)):  # a change to the tracer retraces
            key.update(part.encode())
        from tinytitan.model.registry import home

        cache = home() / "vocab" / f"english-{key.hexdigest()[:24]}.json"
        cached = read_json(cache)
        if isinstance(cached, list):
            return cached
        lines = general_english()
    counts: Counter = Counter()
    trees: dict[int, frozenset[int]] = {}
    for text in lines:
        for token, tree in tracer.pieces(text):
            counts[token] += 1
            trees[token] = tree
    ranking = [sorted(trees[token]) for token, _ in counts.most_common()]
    if cache is not None:
        write_json(cache, ranking, indent=None)
    return ranking


def run_keep_set(config, vocab: Vocab, top: int = DEFAULT_TOP) -> list[int]:
    """The keep set of a fine-tuning run's data (`FinetuneConfig`): its training and validation rows, read
    and split as fine-tuning reads them, plus the `top` most frequent tokens of general English."""
    from dataclasses import replace

    from tinytitan.data.check import split_rows

    _, splits, _ = split_rows(replace(config, skip_bad=True, max_bad_fraction=1.0))
    return keep_set(vocab, chat_texts(splits["train"] + splits["val"]), top=top)


def chat_texts(examples) -> list[str]:
    """The texts the model reads and writes for these examples, cut as `chat_format.encode_chat` and
    training tokenize them: each turn's "role\ntext", the turn ends, the reply prompt, the completion."""
    from tinytitan.model.chat_format import as_messages, turns

    texts = ["\n", "model\n"]
    for example in examples:
        texts += [f"{role}\n{text}" for role, text in turns(as_messages(example.messages))]
        texts.append(example.completion)
    return texts


_ENGLISH = Path(__file__).resolve().parents[1] / "assets" / "wikitext2_test.txt"


def general_english() -> list[str]:
    """Lines of general English text (the bundled WikiText-2 excerpt, CC BY-SA 3.0: tinytitan/assets)."""
    return [line for line in _ENGLISH.read_text(encoding="utf-8").splitlines() if line.strip()]


def unseen_cost(vocab: Vocab, keep: list[int], texts: Iterable[str]) -> dict:
    """What trimming costs on text the keep set was not made from: the share of its pieces spelled as raw
    bytes, and how many more pieces it takes than with the full vocabulary (1.0: as many)."""
    trimmed = Vocab([vocab.tokens[i] for i in keep], [vocab.scores[i] for i in keep], [vocab.types[i] for i in keep])
    full_tracer, tracer = MergeTracer(vocab), MergeTracer(trimmed)
    full = pieces = fallback = 0
    for text in texts:
        full += len(full_tracer.pieces(text))
        for token, _ in tracer.pieces(text):
            pieces += 1
            fallback += trimmed.types[token] == BYTE
    return {"byte_share": fallback / pieces if pieces else 0.0, "pieces_ratio": pieces / full if full else 1.0}


def trim_gguf(source: Path, keep: list[int], target: Path) -> dict:
    """Write `target`: `source` with only the `keep` token ids (see the module's docstring). Returns what
    it did (sizes, counts). No file is left behind on failure."""
    import gguf
    import numpy as np

    from tinytitan.model.convert import add_metadata
    from tinytitan.model.gguf import read_gguf

    g = read_gguf(source)
    if g.get("general.architecture") != "gemma3":
        raise TinyTitanError(f"{source}: a {g.get('general.architecture')!r} model; trimming is made for Gemma 3")
    vocab = Vocab.from_gguf(g)
    if len(keep) >= len(vocab):
        raise TinyTitanError(f"the keep set ({len(keep):,} tokens) is no smaller than the vocabulary "
                             f"({len(vocab):,}): nothing to trim")
    missing = [i for i, kind in enumerate(vocab.types) if kind == CONTROL and i not in set(keep)]
    if missing:
        raise TinyTitanError(f"the keep set drops control token {vocab.tokens[missing[0]]!r} (id {missing[0]})")
    new_id = {old: new for new, old in enumerate(keep)}
    reader = gguf.GGUFReader(source)
    writer = gguf.GGUFWriter(str(target) + ".partial", g.get("general.architecture"))
    try:
        for field in reader.fields.values():
            key = field.name
            if key.startswith("GGUF.") or key == "general.architecture":
                continue
            value = g.get(key)
            if key in ("tokenizer.ggml.tokens", "tokenizer.ggml.scores", "tokenizer.ggml.token_type"):
                value = [value[i] for i in keep] if key.endswith("tokens") else np.asarray(value)[keep]
            elif key.startswith("tokenizer.ggml.") and key.endswith("_token_id"):
                if int(value) not in new_id:
                    raise TinyTitanError(f"the keep set drops the {key[15:-9]} token (id {value})")
                value = new_id[int(value)]
            add_metadata(writer, key, value)
        writer.add_uint32("tinytitan.trim.source_vocab", len(vocab))  # a task vocabulary: tinytitan/shrink/vocabulary.py
        writer.add_string("tinytitan.trim.source", str(Path(source).resolve()))
        for tensor in reader.tensors:
            data = tensor.data
            if tensor.name == "token_embd.weight":  # one row per token: the kept rows, bytes as they are
                data = np.ascontiguousarray(data[np.asarray(keep)])
            writer.add_tensor(tensor.name, data, raw_dtype=tensor.tensor_type)  # shapes from the (byte) arrays
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        Path(str(target) + ".partial").replace(target)
    except BaseException:
        writer.close()
        Path(str(target) + ".partial").unlink(missing_ok=True)
        raise
    return {"source": str(source), "target": str(target), "vocab": len(vocab), "kept": len(keep),
            "bytes_before": source.stat().st_size, "bytes_after": target.stat().st_size}


def describe(keep: list[int], vocab: Vocab) -> dict:
    kinds = Counter(vocab.types[i] for i in keep)
    return {"kept": len(keep), "of": len(vocab), "control": kinds[CONTROL], "bytes": kinds[BYTE],
            "user_defined": kinds[USER_DEFINED], "normal": kinds[NORMAL]}


def save_keep(path: Path, keep: list[int]) -> None:
    write_json(path, keep, indent=None)


def head_negatives(config, keep: list[int], count: int, rows: int = 64) -> tuple["torch.Tensor", dict]:
    """The `count` dropped tokens the full model (`config.model`) gives the most next-token probability at
    the completion positions of `rows` training rows, and their head rows: (count x hidden) fp32, and a
    summary. Fine-tuning in the task vocabulary keeps them in its softmax (never as targets) so that, as in
    the full vocabulary, training still pushes probability off the likeliest tokens the trimmed model drops:
    without them the kept tokens hold ~68% of the untrained model's probability there and training ends
    somewhere else (docs/pruning.md)."""
    from dataclasses import replace

    import torch

    from tinytitan.data.check import prepare_data
    from tinytitan.model.registry import resolve
    from tinytitan.model.torch_model import load_torch_model, load_tokenizer
    from tinytitan.train.head import likeliest_others
    from tinytitan.train.training import use_bf16

    ref = resolve(config.model)
    tokenizer = load_tokenizer(ref)
    examples = prepare_data(replace(config, skip_bad=True, max_bad_fraction=1.0), tokenizer).splits["train"]
    model = load_torch_model(ref, dtype="float32").eval()
    weight = model.lm_head.weight.detach()
    kept = torch.zeros(weight.shape[0], dtype=torch.bool)
    kept[torch.as_tensor(keep)] = True
    order, summary = likeliest_others(model, examples, kept, count, use_bf16(config.precision), rows)
    return weight[order].clone(), summary
