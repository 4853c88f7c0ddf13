"""`tinytitan trim MODEL.gguf --data rows.jsonl -o out.gguf`: a task vocabulary for any Gemma 3 GGUF.

The trimmed GGUF holds the tokens the data needs (with every piece the tokenizer merges through to
reach them), the control, user-defined and byte tokens, and the `--keep-top` most frequent tokens of
general English text; `token_embd` rows are copied bit for bit, every other tensor byte for byte.
Stock llama.cpp runs it; on the data's own text it tokenizes exactly as the full model does.
See `tinytitan/shrink/vocabulary.py` for what is kept and why.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from tinytitan import options
from tinytitan.errors import TinyTitanError


def add_arguments(parser) -> None:
    parser.add_argument("model", help="a Gemma 3 GGUF (a base model or a merged specialist), or `base`: the embedded one")
    parser.add_argument("--data", action="append", default=[], required=True, metavar="FILE",
                        help="rows whose prompts and answers the vocabulary must spell as the full one does "
                             "(JSONL, CSV or TSV, as finetune reads them); give it more than once for several files")
    parser.add_argument("--keep-top", type=options.non_negative_int, default=None,
                        help="also keep the N most frequent tokens of general English (default: 4000)")
    parser.add_argument("--output", "-o", required=True, help="the trimmed GGUF to write")
    options.add_data_spec(parser)
    options.add_json(parser)


def run(args) -> None:
    from tinytitan.data.rows import load_examples
    from tinytitan.shrink.vocabulary import DEFAULT_TOP, Vocab, chat_texts, describe, keep_set, trim_gguf

    from tinytitan.model.artifacts import BASE_NAMES
    from tinytitan.model.registry import resolve

    if args.model not in BASE_NAMES and not Path(args.model).is_file():
        raise TinyTitanError(f"{args.model}: no such file (expected a Gemma 3 GGUF, or `base` for the embedded model)")
    ref = resolve(None if args.model in BASE_NAMES else args.model)
    source, target = ref.path, Path(args.output)
    if target.resolve() == source.resolve():
        raise TinyTitanError(f"--output {target}: that is the model itself; write the trimmed model elsewhere")
    vocab = Vocab.from_gguf(ref.gguf)
    examples = []
    for path in args.data:
        report = load_examples(path, options.data_spec_from(args), duplicates="keep")
        if report.rejected:
            raise TinyTitanError(f"{report.rejected[0]} ({len(report.rejected)} bad rows; `tinytitan data check "
                                 f"{path}` lists them)")
        examples += report.examples
    texts = chat_texts(examples)  # as the chat format and training cut them
    if not examples:
        raise TinyTitanError(f"{', '.join(args.data)}: no rows to make a task vocabulary from")
    top = DEFAULT_TOP if args.keep_top is None else args.keep_top
    keep = keep_set(vocab, texts, top=top)
    result = {**trim_gguf(source, keep, target), **describe(keep, vocab), "keep_top": top}
    if args.json:
        print(json.dumps(result))
    else:
        print(f"wrote {target}: {result['kept']:,} of {result['of']:,} tokens kept ({result['control']:,} control, "
              f"{result['bytes']} byte, {result['user_defined']} user-defined, {result['normal']:,} from the data and "
              f"general English); {result['bytes_before'] / 2**20:.1f} -> {result['bytes_after'] / 2**20:.1f} MiB",
              file=sys.stdout)
