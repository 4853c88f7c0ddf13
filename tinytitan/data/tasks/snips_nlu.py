"""Voice-assistant query -> {"intent": ..., <slot>: <text>, ...}, from the Snips NLU benchmark 2017 (CC0).

Each query of the benchmark is a list of text spans, some tagged with a slot (`entity`); a record
holds the intent and only the slots its query has, in the order they are said. A slot said twice
in one query ("play X and Y") is a list of its values. The seven `train_<Intent>_full.json` files
(about 2,000 queries each) give training and validation (by a hash of the query, `val_fraction`);
the seven `validate_<Intent>.json` files (100 queries each) are the test set, as in the vendors'
benchmark, and training drops the few queries that the test set also holds.

The headline is the vendors' own: slot F1 per (intent, slot) on the 700 test queries, averaged
(`slot_f1`; Snips NLU 0.907, trained per intent on the same files). A slot value is right when it
is the same text; the per-slot figures group rows by their reference intent, as the vendors' per
intent benchmark did. Intent accuracy and record exact match come with it.

One training file (PlayMusic) writes four emoji as CESU-8 (each a pair of 3-byte surrogates), which
is not UTF-8: read as UTF-8 it fails with the file, line and byte; the recipe says `encoding = "cesu-8"`.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from tinytitan.errors import TinyTitanError
from tinytitan.data.tasks import write_with_test_set

SOURCES = ("folder",)
INTENTS = ("AddToPlaylist", "BookRestaurant", "GetWeather", "PlayMusic", "RateBook", "SearchCreativeWork",
           "SearchScreeningEvent")
HEADLINE = "slot_f1"
PER_EXAMPLE = ()  # per-row lists `score` returns besides `per_example` (the rows' record exact match)


def read_queries(path: Path, intent: str, encoding: str) -> list[dict]:
    """The queries of one benchmark file as prompt/completion rows."""
    from tinytitan.data.encodings import decode

    try:
        raw = path.read_bytes()
    except OSError as error:
        raise TinyTitanError(f"{path}: cannot read it ({error.strerror or error})") from None
    try:
        document = json.loads(decode(raw, path, encoding))
    except ValueError as error:
        raise TinyTitanError(f"{path}: not a Snips NLU JSON file ({error})") from None
    queries = document.get(intent) if isinstance(document, dict) else None
    if not isinstance(queries, list):
        raise TinyTitanError(f'{path}: expected {{"{intent}": [queries...]}}')
    rows = []
    for number, query in enumerate(queries, start=1):
        spans = query.get("data") if isinstance(query, dict) else None
        if not isinstance(spans, list) or not all(isinstance(s, dict) and isinstance(s.get("text"), str) for s in spans):
            raise TinyTitanError(f"{path}: query {number} is not a list of {{\"text\": ...}} spans")
        record: dict = {"intent": intent}
        for span in spans:
            slot, value = span.get("entity"), " ".join(span["text"].split())  # as the prompt spaces it
            if slot is None or not value:
                continue
            if slot == "intent":
                raise TinyTitanError(f"{path}: query {number} has a slot named 'intent', which names the intent here")
            if slot in record:  # said twice: a list of the values, in the order they are said
                record[slot] = [*record[slot], value] if isinstance(record[slot], list) else [record[slot], value]
            else:
                record[slot] = value
        text = " ".join("".join(span["text"] for span in spans).split())
        if not text:
            raise TinyTitanError(f"{path}: query {number} is empty")
        rows.append({"prompt": text, "completion": record})
    return rows


def prepare(sources: dict, out: Path, *, encoding: str = "utf-8", val_fraction: float = 0.05, max_val: int = 500,
            max_train: int = 0) -> dict:
    folder = Path(sources["folder"])
    if not folder.is_dir():
        raise TinyTitanError(f"{folder}: no such folder (the Snips NLU benchmark's intent folders)")
    if not 0 < val_fraction < 1:
        raise TinyTitanError(f"val_fraction must be in (0, 1), not {val_fraction}")
    train_rows, test_rows = [], []
    for intent in INTENTS:
        for name, rows in ((f"train_{intent}_full.json", train_rows), (f"validate_{intent}.json", test_rows)):
            path = folder / intent / name
            if not path.is_file():
                raise TinyTitanError(f"{path}: no such file (expected the benchmark's {intent}/{name})")
            rows += read_queries(path, intent, encoding)
    tested = {row["prompt"].lower() for row in test_rows}
    unseen = [row for row in train_rows if row["prompt"].lower() not in tested]
    counts = write_with_test_set(out, unseen, test_rows, val_fraction=val_fraction, max_train=max_train,
                                 max_val=max_val)
    duplicates = counts.pop("duplicates_dropped")
    return {**counts, "in_test_set": len(train_rows) - len(unseen), "duplicates_dropped": duplicates}


# ---------------------------------------------------------------------------------------------
# scoring


def slot_counts(outputs: list[str], references: list[str]) -> tuple[list[tuple[str, str]], np.ndarray]:
    """`(pairs, counts)`: the (reference intent, slot) pairs with reference values, and per row and
    pair the [true positive, false positive, false negative] slot values (a list slot gives one per value)."""
    from collections import Counter

    from tinytitan.evaluate.metrics import parse_record

    def values(record: dict | None) -> Counter:
        found: Counter = Counter()
        for slot, value in (record or {}).items():
            if slot == "intent":
                continue
            for item in value if isinstance(value, list) else [value]:
                if isinstance(item, str) and item.strip():
                    found[(slot, item.strip())] += 1
        return found

    rows = []
    pairs: dict[tuple[str, str], None] = {}
    for output, reference in zip(outputs, references, strict=True):
        gold_record = parse_record(reference) or {}
        intent = str(gold_record.get("intent"))
        gold, guess = values(gold_record), values(parse_record(output))
        row: dict = {}
        for (slot, _), count in gold.items():
            pairs[(intent, slot)] = None
        for key in gold | guess:
            hit = min(gold[key], guess[key])
            tp_fp_fn = row.setdefault((intent, key[0]), [0, 0, 0])
            tp_fp_fn[0] += hit
            tp_fp_fn[1] += guess[key] - hit
            tp_fp_fn[2] += gold[key] - hit
        rows.append(row)
    order = list(pairs)
    counts = np.zeros((len(rows), len(order), 3))
    index = {pair: i for i, pair in enumerate(order)}
    for r, row in enumerate(rows):
        for pair, tp_fp_fn in row.items():
            if pair in index:  # a slot the reference intent never has: nothing to score it against
                counts[r, index[pair]] = tp_fp_fn
    return order, counts


def mean_slot_f1(counts: np.ndarray) -> np.ndarray:
    """The mean over pairs of each pair's F1 from summed counts; `counts` is [..., pairs, 3]."""
    tp, fp, fn = counts[..., 0], counts[..., 1], counts[..., 2]
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(tp + fp > 0, tp / (tp + fp), 0.0)
        recall = np.where(tp + fn > 0, tp / (tp + fn), 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    return f1.mean(axis=-1)


def score(outputs: list[str], examples, resamples: int = 1000, seed: int = 0) -> dict:
    """The generic record metrics, plus the vendors' mean slot F1 (with a bootstrap interval over
    queries), per intent, and intent accuracy."""
    from tinytitan.evaluate.metrics import extraction_metrics, parse_record

    references = [e.completion for e in examples]
    found = extraction_metrics(outputs, references)
    pairs, counts = slot_counts(outputs, references)
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(references), size=(resamples, len(references)))
    weights = np.stack([np.bincount(row, minlength=len(references)) for row in picks]).astype(float)
    resampled = mean_slot_f1(np.einsum("br,rpc->bpc", weights, counts)) if pairs else np.zeros(resamples)
    per_pair = mean_slot_f1(counts.sum(axis=0)[:, None, :]) if pairs else np.zeros(0)
    intents = [str((parse_record(r) or {}).get("intent")) for r in references]
    guessed = [(parse_record(o) or {}).get("intent") for o in outputs]
    by_intent = {intent: float(np.mean([f for (i, _), f in zip(pairs, per_pair) if i == intent]))
                 for intent in dict.fromkeys(i for i, _ in pairs)}
    return {**found, "slot_f1": float(per_pair.mean()) if pairs else 0.0,
            "ci95": [float(np.quantile(resampled, 0.025)), float(np.quantile(resampled, 0.975))],
            "slot_pairs": len(pairs), "slot_f1_by_intent": by_intent,
            "slot_f1_by_slot": {f"{i}/{s}": float(f) for (i, s), f in zip(pairs, per_pair)},
            "intent_accuracy": float(np.mean([g == i for g, i in zip(guessed, intents)])) if intents else 0.0}
