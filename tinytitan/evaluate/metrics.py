"""Task metrics, as plain functions of predictions and references (no model in sight).

- extraction (JSON records): validity, record exact match, per-field precision/recall/F1 with
  support (slot F1: absent on both sides counts nowhere), the most common field errors;
- classification: accuracy, macro-F1 (over every label seen in references or predictions, as
  scikit-learn does), the most common confusions;
- generation: chrF (character 1..6-grams, beta 2, spaces removed: sacreBLEU's defaults) and
  ROUGE-L F1 (longest common subsequence of lower-cased word tokens, as rouge-score does);
- multiple choice: acc and acc_norm as lm-evaluation-harness defines them (acc_norm divides each
  choice's log-likelihood by its length in characters);
- a percentile bootstrap confidence interval for any per-example mean.

They are written here rather than pulled from sacrebleu / rouge-score / scikit-learn because each
is a few lines, and those packages would bring heavy dependencies for one function each. Every
function is unit-tested against hand-computed cases (tests/test_metrics.py).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Sequence

import numpy as np

# ---------------------------------------------------------------------------------------------
# which task a set of reference answers is


def json_answers(texts: Sequence[str]) -> list | None:
    """The parsed answers when every text is a JSON object or array (a JSON task), else None."""
    answers = []
    for text in texts:
        answer = parse_answer(text)
        if answer is None:
            return None
        answers.append(answer)
    return answers


def detect_task(completions: Sequence[str]) -> str:
    """The task these reference answers set: "extraction" when every one is JSON, "classification" when
    they are a small set of short one-line labels (at most 100, and at most one per two rows), else
    "generation". `eval --task auto`, the parity gate and `data check` all decide by it."""
    if json_answers(completions) is not None:
        return "extraction"
    distinct = set(completions)
    if len(distinct) <= min(100, max(2, len(completions) // 2)) and all(len(c) <= 60 and "\n" not in c
                                                                        for c in distinct):
        return "classification"
    return "generation"


# ---------------------------------------------------------------------------------------------
# extraction


def parse_record(text: str) -> dict | None:
    """The JSON object in a model's output, or None when it is not one (an object that repeats a
    key is not one: JSON parsers disagree on which value wins)."""
    value = parse_answer(text)
    return value if isinstance(value, dict) else None


def parse_answer(text: str) -> dict | list | None:
    """The JSON object or array in a model's output, or None (bad JSON, a repeated key, NaN...)."""
    from tinytitan.data.json_values import parse_json

    try:
        value = parse_json(text)
    except ValueError:
        return None
    return value if isinstance(value, (dict, list)) else None


def same_json(a, b) -> bool:
    """JSON equality: numbers by value (1 == 1.0), but true is not 1, and key order does not matter."""
    return _key(a) == _key(b)


def _key(value):
    """A hashable form of a JSON value in which equal JSON values are equal."""
    if isinstance(value, bool) or value is None:
        return ("literal", value)
    if isinstance(value, (int, float)):
        return ("number", value)
    if isinstance(value, str):
        return ("text", value)
    if isinstance(value, list):
        return ("list", tuple(_key(v) for v in value))
    return ("object", frozenset((k, _key(v)) for k, v in value.items()))


def field_values(record, path: str = "") -> dict[str, Counter]:
    """The values of a record by field, for per-field scores: nested objects give dotted fields
    ("address.city"), a list gives one value per item ("tags" holds each tag; a list of objects gives
    "items.name"...). An empty string, null, an empty list or object is no value."""
    found: dict[str, Counter] = {}

    def add(value, at: str) -> None:
        if value in ("", None) or value == [] or value == {}:
            return
        if isinstance(value, dict):
            for key, item in value.items():
                add(item, f"{at}.{key}" if at else key)
        elif isinstance(value, list):
            for item in value:
                add(item, at)
        else:
            found.setdefault(at or "(value)", Counter())[_key(value)] += 1

    add(record, path)
    return found


def extraction_metrics(predictions: Sequence[str], references: Sequence[str], top_errors: int = 10) -> dict:
    """Record-level and field-level scores of JSON outputs against JSON references.

    Record exact match compares whole records as JSON values: a field the reference does not have is
    wrong to write, even empty. Per field (see `field_values`: nested fields dotted, a list's items one
    value each), a predicted value is a true positive when the reference has that value in that field;
    a wrong or extra value is a false positive, and each reference value not matched a false negative,
    as slot F1 is scored in NLU benchmarks: a row where neither side has the field counts nowhere.
    `support` is how many reference values the field has."""
    n = len(references)
    valid = exact = 0
    per_example = []
    tp, fp, fn = Counter(), Counter(), Counter()
    errors: Counter = Counter()
    for prediction, reference in zip(predictions, references, strict=True):
        ref_value = parse_answer(reference)
        parsed = parse_answer(prediction)
        valid += parsed is not None
        same = parsed is not None and same_json(parsed, ref_value)
        exact += same
        per_example.append(float(same))
        ref, pred = field_values(ref_value), field_values(parsed)
        for key in set(ref) | set(pred):
            gold, guess = ref.get(key, Counter()), pred.get(key, Counter())
            hit = sum((gold & guess).values())
            tp[key] += hit
            fp[key] += sum(guess.values()) - hit
            fn[key] += sum(gold.values()) - hit
            if gold != guess:
                kind = "missing" if not guess else "extra" if not gold else "wrong"
                errors[(key, kind)] += 1
    fields = set(tp) | set(fp) | set(fn)
    per_field = {key: {**_prf(tp[key], fp[key], fn[key]), "support": tp[key] + fn[key],
                       "predicted": tp[key] + fp[key]} for key in sorted(fields)}
    return {
        "rows": n,
        "json_valid": valid / n if n else 0.0,
        "exact_match": exact / n if n else 0.0,
        "fields": per_field,
        "reference_fields": sorted(k for k in fields if tp[k] + fn[k]),
        "micro": _prf(sum(tp.values()), sum(fp.values()), sum(fn.values())),
        "top_errors": [{"field": key, "error": kind, "count": count}
                       for (key, kind), count in errors.most_common(top_errors)],
        "per_example": per_example,
    }


def _prf(tp: int, fp: int, fn: int) -> dict:
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}


# ---------------------------------------------------------------------------------------------
# classification


def classification_metrics(predictions: Sequence[str], references: Sequence[str], top_confusions: int = 10) -> dict:
    correct = [float(p == r) for p, r in zip(predictions, references, strict=True)]
    labels = sorted(set(references) | set(predictions))
    per_label = {}
    for label in labels:
        tp = sum(p == label and r == label for p, r in zip(predictions, references))
        fp = sum(p == label and r != label for p, r in zip(predictions, references))
        fn = sum(p != label and r == label for p, r in zip(predictions, references))
        per_label[label] = _prf(tp, fp, fn)
    confusions = Counter((r, p) for p, r in zip(predictions, references) if p != r)
    return {
        "rows": len(references),
        "accuracy": float(np.mean(correct)) if correct else 0.0,
        "macro_f1": float(np.mean([v["f1"] for v in per_label.values()])) if labels else 0.0,
        "labels": per_label,
        "top_confusions": [{"gold": r, "predicted": p, "count": c} for (r, p), c in confusions.most_common(top_confusions)],
        "per_example": correct,
    }


# ---------------------------------------------------------------------------------------------
# generation


def chrf(hypothesis: str, reference: str, max_order: int = 6, beta: float = 2.0) -> float:
    """Sentence chrF in [0, 100]: character n-gram precision and recall averaged over the orders
    both strings have, combined as F-beta (sacreBLEU's definition, whitespace removed)."""
    return chrf_from_stats(chrf_stats(hypothesis, reference, max_order), beta)


def chrf_stats(hypothesis: str, reference: str, max_order: int = 6) -> np.ndarray:
    """Per order: [matches, hypothesis n-grams, reference n-grams]; sums of these give corpus chrF."""
    hyp, ref = re.sub(r"\s+", "", hypothesis), re.sub(r"\s+", "", reference)
    stats = np.zeros((max_order, 3))
    for n in range(1, max_order + 1):
        h = Counter(hyp[i:i + n] for i in range(len(hyp) - n + 1))
        r = Counter(ref[i:i + n] for i in range(len(ref) - n + 1))
        stats[n - 1] = (sum((h & r).values()), sum(h.values()), sum(r.values()))
    return stats


def chrf_from_stats(stats: np.ndarray, beta: float = 2.0) -> float:
    precisions, recalls = [], []
    for matches, hyp_total, ref_total in stats:
        if hyp_total > 0 and ref_total > 0:  # an order neither side is long enough for is skipped
            precisions.append(matches / hyp_total)
            recalls.append(matches / ref_total)
    if not precisions:
        return 0.0
    p, r = float(np.mean(precisions)), float(np.mean(recalls))
    if p + r == 0:
        return 0.0
    return 100.0 * (1 + beta**2) * p * r / (beta**2 * p + r)


def rouge_l(hypothesis: str, reference: str) -> float:
    """ROUGE-L F1 in [0, 1] over lower-cased alphanumeric word tokens."""
    hyp, ref = _words(hypothesis), _words(reference)
    if not hyp or not ref:
        return 0.0
    lcs = _lcs_length(hyp, ref)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(hyp), lcs / len(ref)
    return 2 * precision * recall / (precision + recall)


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


def _lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b):
            current.append(previous[j] + 1 if x == y else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]


def generation_metrics(predictions: Sequence[str], references: Sequence[str]) -> dict:
    sentence_chrf = [chrf(p, r) for p, r in zip(predictions, references, strict=True)]
    corpus = sum((chrf_stats(p, r) for p, r in zip(predictions, references)), np.zeros((6, 3)))
    return {
        "rows": len(references),
        "chrf": float(np.mean(sentence_chrf)) if sentence_chrf else 0.0,
        "corpus_chrf": chrf_from_stats(corpus),
        "rouge_l": float(np.mean([rouge_l(p, r) for p, r in zip(predictions, references)])) if references else 0.0,
        "exact_match": float(np.mean([p.strip() == r.strip() for p, r in zip(predictions, references)]))
        if references else 0.0,
        "per_example": sentence_chrf,
    }


# ---------------------------------------------------------------------------------------------
# multiple choice (log-likelihood scoring)


def choose(logliks: Sequence[float], choices: Sequence[str]) -> tuple[int, int]:
    """`(acc pick, acc_norm pick)`: the most likely choice, raw and per character of the choice."""
    raw = int(np.argmax(logliks))
    normed = int(np.argmax([ll / max(len(text), 1) for ll, text in zip(logliks, choices, strict=True)]))
    return raw, normed


# ---------------------------------------------------------------------------------------------
# confidence


def bootstrap_ci(values: Sequence[float], statistic: Callable[[np.ndarray], float] = np.mean,
                 resamples: int = 1000, confidence: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of `statistic` over examples resampled with replacement."""
    data = np.asarray(values, dtype=np.float64)
    if data.size == 0:
        return 0.0, 0.0
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, data.size, size=(resamples, data.size))
    stats = np.array([statistic(data[row]) for row in picks])
    tail = (1 - confidence) / 2
    return float(np.quantile(stats, tail)), float(np.quantile(stats, 1 - tail))
