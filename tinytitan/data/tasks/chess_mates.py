"""Chess position (FEN) -> the mating move (UCI), from the Lichess puzzle database (CC0).

A puzzle's FEN is the position before the opponent's move; its moves alternate from there. Every
puzzle that ends in mate (themes mateIn1 ... mateIn5) gives one mate-in-one position: play all its
moves but the last, and the last is the answer. Each position also appears with colours swapped
(`chess.Board.mirror()`), which is as legal and as mating, so the set doubles. Splits go by puzzle,
so a position and its mirror stay together. Scored with python-chess: is the answer a legal move
(`legal_move_rate`), does it mate (`mate_rate`, the headline: several moves may mate).
"""

from __future__ import annotations

import csv
from pathlib import Path

from tinytitan.errors import TinyTitanError
from tinytitan.data.tasks import need_file, split_name, write_jsonl

SOURCES = ("puzzles",)
PROMPT = "Chess position (FEN): {fen}\nThe side to move mates in one. The move in UCI notation:"


def positions(path: Path) -> list[tuple[str, str, str]]:
    """(puzzle id, FEN before the mating move, the mating move in UCI)."""
    import chess

    found = []
    try:
        with open(path, newline="", encoding="utf-8") as file:
            reader = csv.DictReader(file)
            if not {"PuzzleId", "FEN", "Moves", "Themes"} <= set(reader.fieldnames or []):
                raise TinyTitanError(f"{path}: expected Lichess puzzle columns PuzzleId,FEN,Moves,Themes")
            for number, row in enumerate(reader, start=2):
                if "mate" not in row["Themes"].split() and not any(t.startswith("mateIn") for t in row["Themes"].split()):
                    continue
                try:
                    board = chess.Board(row["FEN"])
                    moves = [chess.Move.from_uci(m) for m in row["Moves"].split()]
                    for move in moves[:-1]:
                        board.push(move)
                    last = moves[-1]
                    fen = board.fen()
                    board.push(last)
                except ValueError as error:
                    raise TinyTitanError(f"{path}:{number}: not a valid puzzle ({error})") from None
                if board.is_checkmate():
                    found.append((row["PuzzleId"], fen, last.uci()))
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise TinyTitanError(f"{path}: cannot read it as a UTF-8 CSV ({error})") from None
    return found


def mirrored(fen: str, uci: str) -> tuple[str, str]:
    import chess

    board = chess.Board(fen).mirror()
    move = chess.Move.from_uci(uci)
    flip = lambda square: chess.square_mirror(square)  # noqa: E731
    return board.fen(), chess.Move(flip(move.from_square), flip(move.to_square), move.promotion).uci()


def prepare(sources: dict, out: Path, *, split=(0.7, 0.1, 0.2), mirror: bool = True) -> dict:
    splits: dict[str, list] = {"train": [], "val": [], "test": []}
    found = positions(need_file(sources, "puzzles", "Lichess puzzles CSV"))
    if not found:
        raise TinyTitanError(f"{sources['puzzles']}: no puzzle ends in mate")
    for puzzle, fen, move in found:
        part = split_name(puzzle, split)
        variants = [(fen, move)] + ([mirrored(fen, move)] if mirror else [])
        for position, answer in variants:
            splits[part].append({"prompt": PROMPT.format(fen=position), "completion": answer})
    counts = {name: write_jsonl(out / f"{name}.jsonl", rows) for name, rows in splits.items()}
    return {**counts, "puzzles": len(found)}


def score(outputs: list[str], examples) -> dict:
    """legal_move_rate, mate_rate and exact_match (the puzzle's own move), with per-example flags."""
    import chess

    legal, mates, exact = [], [], []
    for output, example in zip(outputs, examples):
        fen = example.messages[-1].content.split("(FEN): ", 1)[1].split("\n", 1)[0]
        board = chess.Board(fen)
        answer = output.strip().split()[0] if output.strip() else ""
        try:
            move = chess.Move.from_uci(answer)
            is_legal = move in board.legal_moves
        except ValueError:
            is_legal = False
        mate = False
        if is_legal:
            board.push(move)
            mate = board.is_checkmate()
        legal.append(is_legal)
        mates.append(mate)
        exact.append(answer == example.completion)
    n = max(len(outputs), 1)
    return {"legal_move_rate": sum(legal) / n, "mate_rate": sum(mates) / n, "exact_match": sum(exact) / n,
            "per_example": [float(m) for m in mates], "legal": legal}


HEADLINE = "mate_rate"
PER_EXAMPLE = ("legal",)
