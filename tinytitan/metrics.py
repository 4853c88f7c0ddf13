"""Task metrics, as plain functions of predictions and references (no model in sight).

- extraction (JSON records): validity, record exact match, per-field exact match and
  precision/recall/F1, the most common field errors;
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

import json
import re
from collections import Counter
from collections.abc import Callable, Sequence

import numpy as np

# ---------------------------------------------------------------------------------------------
# extraction


def parse_record(text: str) -> dict | None:
    """The JSON object in a model's output, or None when it is not one."""
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def extraction_metrics(predictions: Sequence[str], references: Sequence[str], top_errors: int = 10) -> dict:
    """Record-level and field-level scores of JSON outputs against JSON references.

    A predicted (field, value) pair is a true positive when the reference has that field with an
    equal value; a wrong or extra pair is a false positive, and each reference pair not matched is
    a false negative. Empty values ("" / null / []) count as absent."""
    n = len(references)
    valid = exact = 0
    per_example = []
    tp, fp, fn, field_equal = Counter(), Counter(), Counter(), Counter()
    fields: set[str] = set()
    reference_fields: set[str] = set()
    errors: Counter = Counter()
    for prediction, reference in zip(predictions, references, strict=True):
        ref = _present(parse_record(reference) or {})
        parsed = parse_record(prediction)
        valid += parsed is not None
        pred = _present(parsed or {})
        fields |= set(ref) | set(pred)
        reference_fields |= set(ref)
        same = parsed is not None and pred == ref
        exact += same
        per_example.append(float(same))
        for key in set(ref) | set(pred):
            if key in pred and key in ref and pred[key] == ref[key]:
                tp[key] += 1
                continue
            if key in pred:
                fp[key] += 1
            if key in ref:
                fn[key] += 1
            kind = "missing" if key not in pred else "extra" if key not in ref else "wrong"
            errors[(key, kind)] += 1
    for key in fields:
        field_equal[key] = n - sum(count for (k, _), count in errors.items() if k == key)
    per_field = {key: {"exact_match": field_equal[key] / n if n else 0.0,
                       **_prf(tp[key], fp[key], fn[key])} for key in sorted(fields)}
    return {
        "rows": n,
        "json_valid": valid / n if n else 0.0,
        "exact_match": exact / n if n else 0.0,
        "fields": per_field,
        "reference_fields": sorted(reference_fields),
        "micro": _prf(sum(tp.values()), sum(fp.values()), sum(fn.values())),
        "top_errors": [{"field": key, "error": kind, "count": count}
                       for (key, kind), count in errors.most_common(top_errors)],
        "per_example": per_example,
    }


def _present(record: dict) -> dict:
    return {key: value for key, value in record.items() if value not in ("", None, [], {})}


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
