"""The recipes' task data: what each preparer writes from the bundled data, and the chess scorer."""

from __future__ import annotations

import csv
import json

import chess
import pytest

from tests.conftest import ROOT, run_cli
from tinytitan.data.tasks import task_module

DATA = ROOT / "recipes" / "data"


def rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_ingredient_fractions_round_trip_and_prepare(tmp_path):
    from tinytitan.data.tasks.ingredients import quantity_for_model, quantity_from_model

    assert quantity_for_model("#3$4") == "¾" and quantity_for_model("1#1$2 6 170") == "1½ 6 170"
    assert quantity_for_model("1#1$16") == "1+1/16" and quantity_for_model("#1$20") == "1/20"
    assert quantity_for_model("sliced into #1$2 inch-thick wedge") == "sliced into ½ inch-thick wedge"
    with open(DATA / "ingredients" / "tastecooking-ingredients-2024.csv", newline="", encoding="utf-8") as file:
        source = list(csv.DictReader(file))
    for row in source:  # a bijection on the whole dataset: the data's encoding comes back exactly
        for field in ("quantity", "preparation", "comment"):
            assert quantity_from_model(quantity_for_model(row[field])) == row[field], row[field]
    counts = task_module("ingredients").prepare({"csv": DATA / "ingredients" / "tastecooking-ingredients-2024.csv"},
                                                tmp_path)
    assert counts["duplicates_dropped"] == 4
    assert counts["train"] + counts["val"] + counts["test"] == len(source) - 4 and counts["test"] >= 500
    train = rows(tmp_path / "train.jsonl")
    assert all(list(r["completion"]) == ["name", "quantity", "unit", "size", "preparation", "comment", "purpose"]
               for r in train)
    assert not any("#" in v and "$" in v for r in train for v in r["completion"].values())
    tests = {r["prompt"] for r in rows(tmp_path / "test.jsonl")}
    assert not tests & {r["prompt"] for r in train}  # no line in two splits


def test_ingredient_extra_lines_train_only(tmp_path):
    main = DATA / "ingredients" / "tastecooking-ingredients-2024.csv"
    extra = DATA / "ingredients" / "cookstr-ingredients-2017.csv"
    prepare = task_module("ingredients").prepare
    plain = prepare({"csv": main}, tmp_path / "plain")
    counts = prepare({"csv": main, "extra_csv": extra}, tmp_path / "more", max_val=300, max_extra=2000)
    assert counts["val"] == 300 and counts["test"] == plain["test"] and counts["extra"] == 2000
    assert counts["train"] == plain["train"] + 2000
    assert counts["extra_unlabelled"] == 32623  # cookstr's rows past its first 15,003: every field empty (2 repeats dropped)
    assert counts["extra_overlap"] == 3  # labelled cookstr lines that tastecooking also holds
    train = rows(tmp_path / "more" / "train.jsonl")
    assert rows(tmp_path / "more" / "test.jsonl") == rows(tmp_path / "plain" / "test.jsonl")
    main_prompts = {r["prompt"] for s in ("train", "val", "test") for r in rows(tmp_path / "plain" / f"{s}.jsonl")}
    added = train[plain["train"]:]
    assert len(added) == 2000 and not {r["prompt"] for r in added} & main_prompts  # no test line leaks in
    assert all(any(r["completion"].values()) for r in added)
    with open(extra, newline="", encoding="utf-8") as file:
        extra_prompts = {row["input"].strip() for row in csv.DictReader(file)}
    assert {r["prompt"] for r in added} <= extra_prompts
    again = prepare({"csv": main, "extra_csv": extra}, tmp_path / "again", max_val=300, max_extra=2000)
    assert again == counts and rows(tmp_path / "again" / "train.jsonl") == train  # the same slice every time


def test_ingredient_unlabelled_lines_are_prepared_for_a_teacher(tmp_path):
    main = DATA / "ingredients" / "tastecooking-ingredients-2024.csv"
    cookstr = DATA / "ingredients" / "cookstr-ingredients-2017.csv"
    prepare = task_module("ingredients").prepare
    counts = prepare({"csv": main, "unlabelled_csv": cookstr}, tmp_path / "all")
    assert counts["unlabelled"] == 32364  # cookstr's distinct unlabelled lines, labelled nowhere (in either file)
    lines = (tmp_path / "all" / "unlabelled.txt").read_text(encoding="utf-8").splitlines()
    assert len(lines) == len(set(lines)) == 32364 and all(line.strip() == line and line for line in lines)
    with open(cookstr, newline="", encoding="utf-8") as file:
        labelled = {row["input"].strip() for row in csv.DictReader(file)
                    if any(row[f] for f in ("name", "quantity", "unit", "size", "preparation", "comment", "purpose"))}
    main_prompts = {r["prompt"] for s in ("train", "val", "test") for r in rows(tmp_path / "all" / f"{s}.jsonl")}
    assert not set(lines) & main_prompts and not set(lines) & labelled
    some = prepare({"csv": main, "unlabelled_csv": cookstr}, tmp_path / "some", max_unlabelled=500)
    assert some["unlabelled"] == 500
    assert (tmp_path / "some" / "unlabelled.txt").read_text(encoding="utf-8").splitlines() == lines[:500]


def test_banking77_keeps_the_official_test_split(tmp_path):
    counts = task_module("banking77").prepare({"train": DATA / "banking77" / "train.csv",
                                               "test": DATA / "banking77" / "test.csv"}, tmp_path)
    assert counts["test"] == 3080 and counts["labels"] == 77
    assert counts["duplicates_dropped"] == 4 and counts["train"] + counts["val"] == 10003 - 4  # 4 repeated pairs
    assert 0.08 < counts["val"] / 10003 < 0.12


def test_a_test_split_is_scored_as_published_repeats_included(tmp_path, tiny):
    from tinytitan.data.rows import DataSpec, load_examples
    from tinytitan.evaluate.scoring import load_rows

    task_module("banking77").prepare({"train": DATA / "banking77" / "train.csv",
                                      "test": DATA / "banking77" / "test.csv"}, tmp_path)
    test = tmp_path / "test.jsonl"
    strict = load_examples(test, DataSpec())  # as training data, a repeat is refused by line
    # the official test.csv holds "Which ATMs accept this card?" twice (once after a line break)
    assert len(strict.examples) == 3079 and [r.reason for r in strict.rejected][:1] == ["duplicate of line 1442"]
    kept = load_examples(test, DataSpec(), duplicates="keep")
    assert len(kept.examples) == 3080 and kept.repeats == 1 and not kept.rejected
    assert len(load_rows(str(test), DataSpec())) == 3080  # evaluation scores all 3,080

    check = run_cli("data", "check", str(tmp_path / "train.jsonl"), "--val", str(tmp_path / "val.jsonl"),
                    "--test", str(test), "--model", str(tiny[0]), "--max-length", "512", "--json")
    report = json.loads(check.stdout)
    assert check.returncode == 0, check.stderr
    assert report["splits"]["test"] == 3080 and report["rejected"] == 0 and report["repeated_test_rows"] == 1
    with pytest.raises(ValueError, match="duplicates must be"):
        load_examples(test, DataSpec(), duplicates="drop")


def test_stories_are_cut_and_prompted(tmp_path):
    from tinytitan.data.tasks.stories import prompt_for, split_stories

    text = (DATA / "tinystories" / "tinystories_val.txt").read_text()
    stories = split_stories(text)
    assert len(stories) > 700 and all(s.startswith(("Once", "There")) for s in stories)
    roxy = next(s for s in stories if "named Roxy" in s)
    assert prompt_for(roxy) == ("Write a bedtime story. Characters: Roxy (a rhinoceros), Billy (a little bird). "
                                "Setting: a big forest.")
    counts = task_module("bedtime-stories").prepare({"text": DATA / "tinystories" / "tinystories_val.txt"}, tmp_path)
    assert counts["test"] >= 50 and all(len(r["completion"].split()) <= 260 for r in rows(tmp_path / "train.jsonl"))


def test_chess_positions_are_mates_in_one(tmp_path):
    from tinytitan.data.rows import DataSpec, load_examples
    from tinytitan.data.tasks.chess_mates import positions, score

    found = positions(DATA / "chess" / "lichess_puzzles_sample.csv")
    assert len(found) == 304
    counts = task_module("chess-mate-in-one").prepare({"puzzles": DATA / "chess" / "lichess_puzzles_sample.csv"}, tmp_path)
    assert counts["train"] + counts["val"] + counts["test"] == 2 * 304
    examples = load_examples(tmp_path / "test.jsonl", DataSpec()).examples
    for example in examples:  # every answer, mirrored ones too, is legal and mates
        board = chess.Board(example.messages[-1].content.split("(FEN): ")[1].split("\n")[0])
        board.push_uci(example.completion)
        assert board.is_checkmate()
    first = examples[0]
    board = chess.Board(first.messages[-1].content.split("(FEN): ")[1].split("\n")[0])

    def mates(move) -> bool:
        after = board.copy(stack=False)
        after.push(move)
        return after.is_checkmate()

    legal_not_mate = next(m.uci() for m in board.legal_moves if not mates(m))
    result = score([first.completion, legal_not_mate, "z9z9", ""], [first] * 4)
    assert result["mate_rate"] == 0.25 and result["legal_move_rate"] == 0.5 and result["exact_match"] == 0.25
    assert result["per_example"] == [1.0, 0.0, 0.0, 0.0]


def test_unknown_task_and_missing_source(tmp_path):
    from tinytitan.errors import TinyTitanError

    with pytest.raises(TinyTitanError, match="unknown task 'nope'"):
        task_module("nope")
    with pytest.raises(TinyTitanError, match="no such file"):
        task_module("ingredients").prepare({"csv": tmp_path / "missing.csv"}, tmp_path)
    with pytest.raises(TinyTitanError, match=r"missing\.csv: no such file \(more ingredient-parser lines"):
        task_module("ingredients").prepare({"csv": DATA / "ingredients" / "tastecooking-ingredients-2024.csv",
                                            "extra_csv": tmp_path / "missing.csv"}, tmp_path)


def test_snips_queries_become_records_of_only_their_slots(tmp_path):
    folder = DATA / "snips-nlu"
    counts = task_module("snips-nlu").prepare({"folder": folder}, tmp_path, encoding="cesu-8", max_val=0)
    assert counts["test"] == 700 and counts["in_test_set"] == 11 and counts["duplicates_dropped"] == 169
    assert counts["train"] + counts["val"] == 13_784 - 11 - 169
    train, test = rows(tmp_path / "train.jsonl"), rows(tmp_path / "test.jsonl")
    assert not {r["prompt"].lower() for r in train} & {r["prompt"].lower() for r in test}
    first = test[0]  # validate_AddToPlaylist.json's first query, span by span
    source = json.loads((folder / "AddToPlaylist" / "validate_AddToPlaylist.json").read_text())["AddToPlaylist"][0]
    assert first["prompt"] == " ".join("".join(s["text"] for s in source["data"]).split())
    assert first["completion"] == {"intent": "AddToPlaylist", **{s["entity"]: s["text"].strip() for s in source["data"]
                                                                 if "entity" in s}}
    said_twice = next(r for r in train if r["prompt"] == "add The Field album to my romantic evening album")
    assert said_twice["completion"]["music_item"] == ["album", "album"]  # a slot said twice: a list, in order
    pizza = next(r for r in train if "Pop Punk Perfection" in r["prompt"])
    assert pizza["completion"]["playlist"] == "Pop Punk Perfection 🍕"  # CESU-8 surrogates joined into one emoji


def test_snips_without_its_encoding_is_one_line_naming_file_line_and_byte(tmp_path):
    recipe = tmp_path / "snips.toml"
    recipe.write_text(f'[task]\nkind = "snips-nlu"\nfolder = "{DATA / "snips-nlu"}"\n')
    result = run_cli("run", str(recipe), "--output", str(tmp_path / "run"))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: {DATA / 'snips-nlu' / 'PlayMusic' / 'train_PlayMusic_full.json'}:9091: not valid UTF-8 (byte 0xED "
        f"at byte 40 of the line); say the file's encoding with --encoding (a recipe: encoding = \"...\"), e.g. "
        f"latin-1, cp1252, cesu-8")


def test_snips_mean_slot_f1_groups_slots_by_the_reference_intent():
    from tinytitan.data.examples import Example

    references = [{"intent": "PlayMusic", "artist": "abba", "service": "spotify"},
                  {"intent": "PlayMusic", "artist": ["abba", "queen"]},
                  {"intent": "GetWeather", "city": "paris"},
                  {"intent": "GetWeather", "city": "rome", "state": "lazio"}]
    outputs = ['{"intent": "PlayMusic", "artist": "abba", "service": "deezer"}',
               '{"intent": "PlayMusic", "artist": "abba"}',
               '{"intent": "PlayMusic", "city": "paris"}',  # wrong intent, right slot: slots score by the reference's
               'not json']
    examples = [Example((), json.dumps(r), f"t:{i}") for i, r in enumerate(references)]
    found = task_module("snips-nlu").score(outputs, examples)
    # PlayMusic/artist: tp 2, fn 1 (queen) -> P 1, R 2/3, F1 0.8; PlayMusic/service: tp 0, fp 1, fn 1 -> 0
    # GetWeather/city: tp 1, fn 1 -> F1 2/3; GetWeather/state: fn 1 -> 0
    assert found["slot_f1_by_slot"] == pytest.approx({"PlayMusic/artist": 0.8, "PlayMusic/service": 0.0,
                                                      "GetWeather/city": 2 / 3, "GetWeather/state": 0.0})
    assert found["slot_f1"] == pytest.approx((0.8 + 2 / 3) / 4)
    assert found["slot_f1_by_intent"] == pytest.approx({"PlayMusic": 0.4, "GetWeather": 1 / 3})
    assert found["intent_accuracy"] == pytest.approx(0.5) and found["exact_match"] == 0.0
    low, high = found["ci95"]
    assert 0 <= low <= found["slot_f1"] <= high <= 1 and low < high
    assert found["per_example"] == [0.0, 0.0, 0.0, 0.0]
