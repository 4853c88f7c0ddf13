"""A classical baseline trained on the run's own training rows in seconds, scored beside the specialist
like any artifact, so a report says whether the 270M is worth deploying for the task.

- **Labels** (classification): TF-IDF of word 1-2-grams and character 2-5-grams, logistic regression
  (scikit-learn).
- **JSON records whose text fields copy the input's words** (extraction; Snips-style slot records): a
  linear-chain CRF (python-crfsuite) over the input's words, each word tagged with the field it was copied
  into (B-/I- tags, so a list field gets one item per B), the record rebuilt from the tags in the input's own
  spelling (or the form the targets write a word in: "cans" -> "can", learned from the training rows). An enum
  field (an intent) gets the label model over the whole input; a record of enum fields only is one label model
  per field. Rows whose values are not words of their input are left out of the CRF's training, and counted;
  when they are most rows, no baseline applies.
- **Anything else** (free text, a task with its own judge such as chess moves): `NoBaseline`, with why.

The features are the usual ones of CRF taggers for short texts (usaddress, ingredient-parser): the word,
its lower case, shape, prefixes and suffixes, digits and fractions, brackets, and the same of two words
either side. What no library does is the tag alignment and the record rebuild; they are here.
"""

from __future__ import annotations

import json
import re
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from tinytitan.errors import TinyTitanError

# numbers ("1/2", "1.5", "1,000"), letter runs ("don't"), and any other mark alone: "100g" is "100" + "g", glued
WORD = re.compile(r"\d+(?:[./,]\d+)*|[^\W\d_]+(?:['’](?!s\b)[^\W\d_]+)*|[^\w\s]|_")
ABSENT = "\x00absent"  # an optional enum field's label when a row leaves the field out
CRF_ALGORITHM = "lbfgs"
CRF_PARAMS = {"c1": 0.1, "c2": 0.01, "max_iterations": 60, "feature.possible_transitions": True}


class NoBaseline(TinyTitanError):
    """The task's answers have no classical baseline; the message says why."""


@dataclass
class Baseline:
    """A fitted baseline: `predict` gives each input's answer as text (a label, or a record as JSON)."""
    method: str  # what it is, for the table: "TF-IDF + logistic regression", "CRF"
    train_seconds: float
    size_bytes: int
    details: dict = field(default_factory=dict)
    model: object = None

    def predict(self, texts: list[str]) -> list[str]:
        return self.model.predict(texts)


def fit_baseline(task: str, inputs: list[str], answers: list[str]) -> Baseline:
    """The baseline for `task` ("classification", "extraction" or a task module's name) trained on the
    training rows (their inputs and reference answers as text). Raises NoBaseline when none applies."""
    from tinytitan.evaluate.metrics import json_answers

    if not inputs:
        raise NoBaseline("no training rows to fit a baseline on")
    started = time.perf_counter()
    records = json_answers(answers)
    if task == "classification":
        model, method, details = LabelModel(inputs, answers), "TF-IDF + logistic regression", {}
    elif records is not None and all(isinstance(r, dict) for r in records):
        model = RecordModel(inputs, records)
        method, details = model.method, model.details
    elif task == "generation":
        raise NoBaseline("free text: no classical baseline writes it (compare perplexity and the base model)")
    else:
        raise NoBaseline(f"the {task} task's answers are neither labels nor JSON records of the input's words")
    return Baseline(method, round(time.perf_counter() - started, 2), model.size_bytes(), details, model)


# ---------------------------------------------------------------------------------------------
# labels


class LabelModel:
    """TF-IDF word and character n-grams -> logistic regression: one label per input."""

    def __init__(self, inputs: list[str], labels: list[str]):
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline, make_union

        self.constant = labels[0] if len(set(labels)) == 1 else None  # one label: nothing to learn
        if self.constant is None:
            features = make_union(TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True),
                                  TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True, min_df=2))
            self.pipeline = make_pipeline(features, LogisticRegression(C=10.0, max_iter=2000))
            self.pipeline.fit(inputs, labels)

    def predict(self, texts: list[str]) -> list[str]:
        if self.constant is not None:
            return [self.constant] * len(texts)
        return [str(label) for label in self.pipeline.predict(texts)]

    def size_bytes(self) -> int:
        import pickle

        return len(pickle.dumps(getattr(self, "pipeline", self.constant)))


# ---------------------------------------------------------------------------------------------
# records of the input's words


def tokenize(text: str) -> list[tuple[str, int, int]]:
    """The input's words and punctuation marks, with where each starts and ends."""
    return [(m.group(), m.start(), m.end()) for m in WORD.finditer(text)]


def field_kinds(records: list[dict], inputs: list[str] | None = None) -> tuple[dict[str, str], set[str]]:
    """Each field's kind ("enum", "text", "list", "either", "number") in first-seen order, and the fields every
    record has. A field of few values is an enum (a label to pick) unless, given the `inputs`, its values are
    words of their input in at least 90% of the rows that have one (then the CRF tags it like any text). A
    field of another kind (an object, a true/false) has no CRF baseline."""
    from tinytitan.data.schema import infer_schema

    schema = infer_schema(records)
    kinds = {}
    for name, spec in schema.get("properties", {}).items():
        branches = spec.get("anyOf", [spec])
        types = {t for b in branches for t in (b.get("type") if isinstance(b.get("type"), list) else [b.get("type")])}
        types.discard("null")
        items = {b.get("items", {}).get("type") for b in branches if "items" in b}
        if "enum" in spec:
            kinds[name] = "text" if inputs is not None and _copied(name, inputs, records) else "enum"
        elif types == {"string"}:
            kinds[name] = "text"
        elif "array" in types and types <= {"string", "array"} and items <= {"string"}:
            kinds[name] = "either" if "string" in types else "list"  # either: a text, or a list when said twice
        elif types <= {"integer", "number"}:
            kinds[name] = "number"
        else:
            raise NoBaseline(f'field "{name}" holds {"/".join(sorted(t for t in types if t))}: a CRF over the '
                             f"input's words rebuilds texts, lists of texts, numbers and labels only")
    return kinds, set(schema.get("required", []))


def _copied(name: str, inputs: list[str], records: list[dict]) -> bool:
    """Whether the values of field `name` are words of their input in at least 90% of the rows that have one."""
    said = [(text, record[name]) for text, record in zip(inputs, records)
            if isinstance(record.get(name), str) and record[name]]
    found = sum(align(tokenize(text), {name: value}, {name: "text"}) is not None for text, value in said)
    return bool(said) and found >= 0.9 * len(said)


def _same_word(token: str, word: str) -> str | None:
    """How `token` spells `word`: "exact", "case" (other letter case), "form" (another form of the same
    word, as "cans" of "can" or "leaves" of "leaf": a shared stem, a different ending), or None."""
    if token == word:
        return "exact"
    if token.lower() == word.lower():
        return "case"
    a, b = token.lower(), word.lower()
    if not (a.isalpha() and b.isalpha()) or abs(len(a) - len(b)) > 3:
        return None
    common = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    return "form" if common >= max(3, min(len(a), len(b)) - 1) else None


def align(tokens: list[tuple[str, int, int]], record: dict, kinds: dict[str, str]) -> tuple[list[str], list] | None:
    """Each token's tag (B-, I- or J-field, or O) for a training record, and the (field, token, word) of each
    value word that is one token (to learn the forms the targets write a word in); None when a value's word is no word (or run of glued words) of the input."""
    tags, forms = ["O"] * len(tokens), []
    for name, kind in kinds.items():
        if kind == "enum" or name not in record or record[name] is None:
            continue
        value = record[name]
        items = value if isinstance(value, list) else [value]
        for item in items:
            after = 0
            for position, word in enumerate(str(item).split()):
                found = _find(tokens, tags, word, after) or _find(tokens, tags, word, 0)
                if found is None:
                    return None
                start, end, how = found
                for index in range(start, end):  # B: an item's first word, I: a next word, J: the word goes on
                    tags[index] = ("J-" if index > start else "B-" if position == 0 else "I-") + name
                if end == start + 1:
                    forms.append((name, tokens[start][0], word))
                after = end
    return tags, forms


def _find(tokens, tags, word: str, start: int) -> tuple[int, int, str] | None:
    """The first untagged token from `start` that spells `word`, or run of tokens that does when joined
    ("inch" "-" "thick" for "inch-thick", "1" "½" for "1½"): (first, past the last, how)."""
    for first in range(start, len(tokens)):
        if tags[first] != "O":
            continue
        joined, last = tokens[first][0], first
        while last + 1 < len(tokens) and tags[last + 1] == "O" and len(joined) < len(word):
            last += 1
            joined += tokens[last][0]
            if joined.lower() == word.lower():
                return first, last + 1, "exact" if joined == word else "case"
        how = _same_word(tokens[first][0], word)
        if how:
            return first, first + 1, how
    return None


def word_features(tokens: list[tuple[str, int, int]]) -> list[dict]:
    """Each token's CRF features, with those of two tokens either side."""
    def own(word: str) -> dict:
        shape = re.sub(r"(.)\1+", r"\1", re.sub(r"\d", "0", re.sub(r"[a-z]", "a", re.sub(r"[A-Z]", "A", word))))
        return {"lower": word.lower(), "shape": shape[:6], "pre3": word[:3].lower(), "suf3": word[-3:].lower(),
                "suf2": word[-2:].lower(), "digit": any(c.isdigit() for c in word),
                "fraction": bool(re.fullmatch(r"\d+[/.,]\d+|[½⅓⅔¼¾⅛]", word)), "title": word.istitle(),
                "upper": word.isupper(), "punct": not any(c.isalnum() for c in word)}

    words = [own(t[0]) for t in tokens]
    depth, bracket = 0, []
    for token, _, _ in tokens:
        depth += token in "([{"
        bracket.append(depth > 0)
        depth = max(0, depth - (token in ")]}"))
    features = []
    for index, mine in enumerate(words):
        item = {"bias": 1.0, **{k: v for k, v in mine.items()}, "bracket": bracket[index],
                "position": "first" if index == 0 else "last" if index == len(tokens) - 1 else "middle",
                "after_comma": any(t[0] == "," for t in tokens[:index])}
        for offset in (-2, -1, 1, 2):
            other = index + offset
            if 0 <= other < len(words):
                item.update({f"{offset}:lower": words[other]["lower"], f"{offset}:shape": words[other]["shape"],
                             f"{offset}:digit": words[other]["digit"]})
            else:
                item[f"{offset}:edge"] = True
        features.append({k: (str(v) if isinstance(v, bool) else v) for k, v in item.items()})
    return features


class RecordModel:
    """A CRF tags the input's words with the field each is copied into; a label model picks each enum field."""

    def __init__(self, inputs: list[str], records: list[dict]):
        self.kinds, self.required = field_kinds(records, inputs)
        self.order = list(self.kinds)
        self.labels = {}
        for name in (n for n, kind in self.kinds.items() if kind == "enum"):
            values = [str(r[name]) if name in r else ABSENT for r in records]
            self.labels[name] = LabelModel(inputs, values)
        self.tagger = self.path = None
        self.details = {"rows": len(records), "fields": dict(self.kinds)}
        self.method = "logistic regression per field"
        if any(kind != "enum" for kind in self.kinds.values()):
            self._train_tagger(inputs, records)
            self.method = "CRF + logistic regression" if self.labels else "CRF"

    def _train_tagger(self, inputs: list[str], records: list[dict]) -> None:
        import pycrfsuite

        trainer = pycrfsuite.Trainer(algorithm=CRF_ALGORITHM, verbose=False)
        forms: dict[tuple[str, str], Counter] = defaultdict(Counter)
        aligned = 0
        for text, record in zip(inputs, records):
            tokens = tokenize(text)
            tagged = align(tokens, record, self.kinds) if tokens else None
            if tagged is None:
                continue
            tags, changed = tagged
            aligned += 1
            for name, token, word in changed:
                forms[(name, token)][word] += 1
            trainer.append(word_features(tokens), tags)
        if aligned < 0.5 * len(records):
            raise NoBaseline(f"only {aligned:,} of {len(records):,} training records are spelled with words of their "
                             f"input: a CRF over the input's words cannot rebuild them")
        # a token is written in another form ("cans" -> "can") where the targets do so more often than not
        self.forms = {key: word for key, words in forms.items()
                      for word, count in words.most_common(1) if word != key[1] and 2 * count > sum(words.values())}
        trainer.set_params(CRF_PARAMS)
        self.folder = tempfile.TemporaryDirectory(prefix="tinytitan-crf-")
        self.path = Path(self.folder.name) / "fields.crfsuite"
        trainer.train(str(self.path))
        self.tagger = pycrfsuite.Tagger()
        self.tagger.open(str(self.path))
        self.details.update(aligned_rows=aligned, forms=len(self.forms), crf=CRF_PARAMS)

    def predict(self, texts: list[str]) -> list[str]:
        picked = {name: model.predict(texts) for name, model in self.labels.items()}
        answers = []
        for index, text in enumerate(texts):
            tokens = tokenize(text)
            tags = self.tagger.tag(word_features(tokens)) if tokens and self.tagger else []
            record = self._rebuild(tokens, tags)
            for name, values in picked.items():
                if values[index] != ABSENT:
                    record[name] = values[index]
            answers.append(json.dumps({k: record[k] for k in self.order if k in record}, ensure_ascii=False))
        return answers

    def _rebuild(self, tokens, tags) -> dict:
        items: dict[str, list[str]] = defaultdict(list)
        previous: dict[str, int] = {}
        for index, ((token, start, _), tag) in enumerate(zip(tokens, tags)):
            if tag == "O" or tag[2:] not in self.kinds:
                continue
            name = tag[2:]
            word = self.forms.get((name, token), token)
            last = previous.get(name)
            if tag.startswith("B-") or last is None:
                items[name].append(word)
            elif tag.startswith("J-"):  # the word goes on without a space: "inch-thick", "1½"
                items[name][-1] += word
            else:
                items[name][-1] += " " + word
            previous[name] = index
        record: dict = {}
        for name, kind in self.kinds.items():
            values = items.get(name, [])
            if kind == "enum":
                continue
            if kind == "list" or (kind == "either" and len(values) > 1):
                value = values if values or name in self.required else None
            elif kind == "number":
                value = _number(" ".join(values)) if values else None
            else:
                value = " ".join(values) if values else ("" if name in self.required else None)
            if value is not None:
                record[name] = value
        return record

    def size_bytes(self) -> int:
        tagger = self.path.stat().st_size if self.path else 0
        return tagger + sum(m.size_bytes() for m in self.labels.values())


def _number(text: str):
    try:
        number = float(text)
    except ValueError:
        return text
    return int(number) if number.is_integer() and re.fullmatch(r"-?\d+", text) else number


# ---------------------------------------------------------------------------------------------
# scored like an artifact


def score_baseline(task: str, training, examples, *, seed: int = 0, out: Path | None = None) -> dict:
    """The baseline trained on `training` (examples) and scored on `examples` with the task's own metrics, as
    an eval result row (`scoring.evaluate_task`'s): the score and its 95% interval, size, seconds, and under
    "baseline" how it was made and how fast it answers one input. {"none": why} when no baseline applies."""
    from tinytitan.evaluate import metrics
    from tinytitan.evaluate.scoring import examples_file, headline_of, task_metrics, write_examples

    try:
        model = fit_baseline(task, [e.input_text for e in training], [e.completion for e in training])
    except NoBaseline as reason:
        return {"none": str(reason)}
    inputs = [e.input_text for e in examples]
    started = time.perf_counter()
    outputs = model.predict(inputs)
    seconds = time.perf_counter() - started
    one = inputs[:50]  # one input at a time, as a served request is answered
    started = time.perf_counter()
    for text in one:
        model.predict([text])
    ms_per_answer = 1000 * (time.perf_counter() - started) / max(len(one), 1)
    found, per_example = task_metrics(task, outputs, [e.completion for e in examples], examples)
    headline = headline_of(task)
    low, high = found.pop("ci95") if "ci95" in found else metrics.bootstrap_ci(per_example["correct"], seed=seed)
    label = f"classical baseline ({model.method})"
    if out:
        write_examples(examples_file(out, label), examples, {"output": outputs, **per_example})
    return {**found, "artifact": label, "spec": None, "kind": "baseline", "quant": None, "gate": None,
            "vocabulary": None, "servable": False, "reference": False, "few_shot": 0,
            "size_mb": model.size_bytes / 2**20, "headline": headline, "score": found[headline], "ci95": [low, high],
            "seconds": round(seconds, 2),
            "baseline": {"method": model.method, "train_rows": len(training), "train_seconds": model.train_seconds,
                         "ms_per_answer": round(ms_per_answer, 3), **model.details}}
