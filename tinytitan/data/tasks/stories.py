"""Short prompt (characters, setting) -> a bedtime story, from TinyStories (CDLA-Sharing-1.0).

The text file holds stories and paragraphs separated alike by blank lines; a story starts at a
paragraph that opens like TinyStories' stories do ("Once upon a time", "Once there was", ...).
Each story's prompt is drawn from the story itself: its named characters ("a rhinoceros named
Roxy" -> "Roxy (a rhinoceros)"; else the first "a little girl"-style character) and its setting
(the first "in a big forest"-style place), e.g.

    Write a bedtime story. Characters: Roxy (a rhinoceros), Billy (a bird). Setting: a big forest.
"""

from __future__ import annotations

import re
from pathlib import Path

from tinytitan.errors import TinyTitanError
from tinytitan.data.tasks import need_file, split_name, write_jsonl

SOURCES = ("text",)
OPENINGS = ("Once upon a time", "Once there was", "Once there were", "There once was", "There was once",
            "Once, there was", "Once, there were")
NAMED = re.compile(r"\b(?:a|an|the)\s+((?:[a-z]+\s){0,2}[a-z]+)\s+named\s+([A-Z][a-z]+)")
PLAIN = re.compile(r"\b(?:a|an)\s+((?:little|big|small|young|old|kind|happy|brave|tiny)\s+[a-z]+)")
PLACES = ("forest", "park", "house", "town", "garden", "village", "jungle", "sea", "ocean", "farm", "school",
          "city", "sky", "pond", "river", "beach", "castle", "yard", "room", "kitchen", "zoo", "lake",
          "mountain", "field", "meadow", "cave", "island", "tree", "shop", "store", "home", "world", "land")
SETTING = re.compile(r"\bin\s+(?:a|an|the)\s+((?:[a-z]+\s){0,2}(?:" + "|".join(PLACES) + r"))\b")


def split_stories(text: str) -> list[str]:
    stories: list[list[str]] = []
    for paragraph in (p.strip() for p in re.split(r"\n\s*\n", text)):
        if not paragraph:
            continue
        if paragraph.startswith(OPENINGS) or not stories:
            stories.append([paragraph])
        else:
            stories[-1].append(paragraph)
    # the file may open mid-story: keep only stories that start like one
    return ["\n\n".join(s) for s in stories if s[0].startswith(OPENINGS)]


def prompt_for(story: str) -> str:
    characters, seen = [], set()
    for kind, name in NAMED.findall(story):
        if name not in seen:
            seen.add(name)
            characters.append(f"{name} ({'an' if kind[0] in 'aeiou' else 'a'} {kind})")
    if not characters:
        plain = [kind for kind in PLAIN.findall(story) if kind.split()[-1] not in PLACES]
        characters = [f"a {plain[0]}"] if plain else []
    setting = SETTING.search(story)
    parts = ["Write a bedtime story."]
    if characters:
        parts.append(f"Characters: {', '.join(characters[:3])}.")
    if setting:
        parts.append(f"Setting: {'an' if setting.group(1)[0] in 'aeiou' else 'a'} {setting.group(1)}.")
    return " ".join(parts)


def prepare(sources: dict, out: Path, *, max_train: int = 0, max_val: int = 0, max_words: int = 260, split=(0.8, 0.1, 0.1)) -> dict:
    path = need_file(sources, "text", "TinyStories text")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise TinyTitanError(f"{path}: cannot read it as UTF-8 text ({error})") from None
    stories = split_stories(text)
    if not stories:
        raise TinyTitanError(f"{path}: no story found (expected paragraphs opening with 'Once upon a time' ...)")
    splits: dict[str, list] = {"train": [], "val": [], "test": []}
    too_long = 0
    for story in stories:
        if len(story.split()) > max_words:  # bedtime-short: and they fit the training length
            too_long += 1
            continue
        splits[split_name(story, split)].append({"prompt": prompt_for(story), "completion": story})
    if max_train:
        splits["train"] = splits["train"][:max_train]
    if max_val:
        splits["val"] = splits["val"][:max_val]
    counts = {name: write_jsonl(out / f"{name}.jsonl", rows) for name, rows in splits.items()}
    return {**counts, "stories": len(stories), "longer_than_max_words": too_long}
