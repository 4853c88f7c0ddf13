"""Recipe ingredient line -> JSON record, from ingredient-parser's labelled data (MIT).

The CSV (`input,name,quantity,unit,size,preparation,comment,purpose`) becomes one row per line:
the prompt is the ingredient line, the completion an object with the seven fields, "" where the
data has none, keys in that order.

Fractions: the data writes fractions as `#1$2` (= 1/2) and mixed numbers as `1#1$2` (= 1 1/2),
several values separated by spaces ("1#1$2 6 170" for "1 ½ sticks (6 oz / 170g)"). The model is
shown the fraction as the Unicode character the ingredient lines themselves use (`#3$4` -> "¾",
`1#1$2` -> "1½"; in every field, as "½ inch-thick" in a preparation), so a value stays one word and the lists stay space-separated; a fraction with no
such character (1/16, 1/20) is written `1/16` (`1#1$16` -> "1+1/16"). `quantity_from_model` turns
an answer back into the data's encoding.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

from tinytitan.errors import TinyTitanError
from tinytitan.data.splits import stable_hash
from tinytitan.data.tasks import drop_repeats, need_file, split_name, write_jsonl

SOURCES = ("csv", "extra_csv", "unlabelled_csv")
REQUIRED = ("csv",)
FIELDS = ("name", "quantity", "unit", "size", "preparation", "comment", "purpose")
GLYPHS = {(1, 2): "½", (1, 3): "⅓", (2, 3): "⅔", (1, 4): "¼", (3, 4): "¾", (1, 5): "⅕", (2, 5): "⅖",
          (3, 5): "⅗", (4, 5): "⅘", (1, 6): "⅙", (5, 6): "⅚", (1, 7): "⅐", (1, 8): "⅛", (3, 8): "⅜",
          (5, 8): "⅝", (7, 8): "⅞", (1, 9): "⅑", (1, 10): "⅒"}
FRACTION = re.compile(r"(\d*)#(\d+)\$(\d+)")


def quantity_for_model(text: str) -> str:
    def glyph(match: re.Match) -> str:
        whole, top, bottom = match.group(1), int(match.group(2)), int(match.group(3))
        if (top, bottom) in GLYPHS:
            return whole + GLYPHS[(top, bottom)]
        return f"{whole}+{top}/{bottom}" if whole else f"{top}/{bottom}"

    return FRACTION.sub(glyph, text)


def quantity_from_model(text: str) -> str:
    back = {g: f"#{a}${b}" for (a, b), g in GLYPHS.items()}
    text = re.sub(r"(?:(\d+)\+)?(\d+)/(\d+)", lambda m: f"{m.group(1) or ''}#{m.group(2)}${m.group(3)}", text)
    return "".join(back.get(ch, ch) for ch in text)


def read_lines(path: Path) -> list[dict]:
    """One example per CSV row, exact repeats kept (drop_repeats decides), fractions as glyphs."""
    try:
        with open(path, newline="", encoding="utf-8") as file:
            reader = csv.DictReader(file)
            missing = [c for c in ("input", *FIELDS) if c not in (reader.fieldnames or [])]
            if missing:
                raise TinyTitanError(f"{path}: no column {missing[0]!r} (expected input,{','.join(FIELDS)})")
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise TinyTitanError(f"{path}: cannot read it as a UTF-8 CSV ({error})") from None
    examples = []
    for number, row in enumerate(rows, start=2):
        line = (row["input"] or "").strip()
        if not line:
            raise TinyTitanError(f"{path}:{number}: the input is empty")
        record = {f: quantity_for_model((row[f] or "").strip()) for f in FIELDS}  # fractions appear in any field
        examples.append({"prompt": line, "completion": record})
    return examples


def prepare(sources: dict, out: Path, *, max_train: int = 0, max_val: int = 0, max_extra: int = 0,
            max_unlabelled: int = 0, split=(0.8, 0.1, 0.1)) -> dict:
    """train/val/test from `csv` (validation cut to `max_val` rows, 0 = all).

    `extra_csv` (optional, same columns) adds up to `max_extra` lines (0 = all) to training only, so
    validation and test stay the main set's. Left out of it, and counted: lines with every field
    empty (`extra_unlabelled`: cookstr's rows past its first 15,003 carry no labels) and lines the
    main set holds (`extra_overlap`). The slice is spread over the file by a stable hash.

    `unlabelled_csv` (optional, same columns): its lines with every field empty, not in the main set and
    not labelled elsewhere in the file,
    up to `max_unlabelled` (0 = all, spread by the same hash), written to `unlabelled.txt` for a
    distillation teacher to label ([distill] in the recipe).
    """
    path = need_file(sources, "csv", "ingredient-parser's CSV")
    examples, duplicates = drop_repeats(read_lines(path))  # the same line with the same labels: once is enough
    splits: dict[str, list] = {"train": [], "val": [], "test": []}
    for example in examples:
        splits[split_name(example["prompt"], split)].append(example)
    if max_val:
        splits["val"] = splits["val"][:max_val]
    counts: dict = {}
    if "extra_csv" in sources:
        extra_path = need_file(sources, "extra_csv", "more ingredient-parser lines, for training")
        extra, extra_duplicates = drop_repeats(read_lines(extra_path))
        labelled = [example for example in extra if any(example["completion"].values())]
        known = {example["prompt"] for example in examples}
        fresh = [example for example in labelled if example["prompt"] not in known]
        fresh.sort(key=lambda example: stable_hash(example["prompt"]))
        taken = fresh[:max_extra] if max_extra else fresh
        splits["train"] += taken
        duplicates += extra_duplicates
        counts = {"extra": len(taken), "extra_unlabelled": len(extra) - len(labelled),
                  "extra_overlap": len(labelled) - len(fresh)}
    if "unlabelled_csv" in sources:
        lines = read_lines(need_file(sources, "unlabelled_csv", "ingredient lines for a teacher to label"))
        # lines the main set holds, or this file labels elsewhere (cookstr repeats lines), are labelled data
        known = {example["prompt"] for example in examples} | \
            {example["prompt"] for example in lines if any(example["completion"].values())}
        inputs = sorted({example["prompt"] for example in lines if not any(example["completion"].values())} - known,
                        key=stable_hash)
        inputs = inputs[:max_unlabelled] if max_unlabelled else inputs
        if any("\n" in text for text in inputs):
            raise TinyTitanError("an unlabelled ingredient line holds a line break; one input per line expected")
        out.mkdir(parents=True, exist_ok=True)
        (out / "unlabelled.txt").write_text("".join(text + "\n" for text in inputs), encoding="utf-8")
        counts["unlabelled"] = len(inputs)
    if max_train:
        splits["train"] = splits["train"][:max_train]
    counts |= {name: write_jsonl(out / f"{name}.jsonl", rows) for name, rows in splits.items()}
    return {**counts, "duplicates_dropped": duplicates}
