"""Tokenizer files other tools read: Hugging Face `tokenizer.json`, GPT-2's pair, tiktoken ranks.

A scratchlm tokenizer is fully described by three things: `ranks` (the bytes of every ordinary
token mapped to its id; an id is also the token's merge priority, lower merges first, as in
tiktoken), `special_tokens` (text mapped to id) and the pre-tokenization `pattern`.

Hugging Face and GPT-2 files store byte-level tokens as text, each byte shown as one printable
character (`bytes_to_unicode`), and describe BPE as an ordered list of pair merges. To give the
same ids as tiktoken's rank rule ("merge the adjacent pair whose concatenation has the lowest
rank"), the exported merge list contains every split of every token into two tokens, ordered by
the rank of the token they make, and `ignore_merges` is set so that a word that is a token as a
whole is looked up directly, as tiktoken does.

Imported files are read the other way: a token's id becomes its rank, which requires ids to
follow the merge order (GPT-2's files and `tokenizers`' trainer output do; a file that does not
is refused with the merge line). Their merges are then applied by tiktoken's rule, which gives the
merge list's ids exactly when, in addition, the merge list assembles every multi-byte token from
its own bytes (`_check_tokens_assemble`, run at import): a pair that tiktoken could merge but the
list does not name can only ever meet inside the bytes of the token it would make, so it shows up
there. Trained files always pass; a truncated merges list, or one naming a token's parts in another
order than its id (merges `a b`, `b c`, `a bc`), is refused with the token. Files with
`ignore_merges` are tiktoken vocabularies (Llama 3's), whose original ids tiktoken's rule gives.

Special tokens are written both in `added_tokens` and in the model vocab, with their ids, as
Hugging Face does; files that list them only in `added_tokens` (scratchlm's earlier layout) are
read too.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Mapping
from functools import lru_cache
from json.encoder import encode_basestring as quote  # the C-accelerated quoter
from pathlib import Path
from typing import Any

from scratchlm.errors import TokenizerError
from scratchlm.fsutil import brief, is_json_int, read_json, read_text_file
from scratchlm.tokenizer.patterns import GPT2_PATTERN

CHATML_MARKERS = ("<|im_start|>", "<|im_end|>")
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's printable stand-in for each byte: printable Latin-1 bytes stand for themselves,
    the others (controls, space, ...) are shifted to code points from 256 upwards."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table: dict[int, str] = {}
    shifted = 0
    for byte in range(256):
        if byte in keep:
            table[byte] = chr(byte)
        else:
            table[byte] = chr(256 + shifted)
            shifted += 1
    return table


@lru_cache(maxsize=1)
def unicode_to_bytes() -> dict[str, int]:
    return {ch: byte for byte, ch in bytes_to_unicode().items()}


@lru_cache(maxsize=1)
def _to_text_table() -> dict[int, str]:
    """`str.translate` table from Latin-1 characters (one per byte) to GPT-2's stand-ins."""
    return {byte: ch for byte, ch in bytes_to_unicode().items()}


@lru_cache(maxsize=1)
def _to_bytes_table() -> dict[int, int | None]:
    """`str.translate` table back; characters below 256 that stand for no byte are deleted, so
    a length change reveals them (characters above 255 make the Latin-1 encoding fail)."""
    table: dict[int, int | None] = {code: None for code in range(256)}
    table.update({ord(ch): byte for ch, byte in unicode_to_bytes().items()})
    return table


def token_to_text(token: bytes) -> str:
    return token.decode("latin-1").translate(_to_text_table())


def byte_level_token(text: str) -> bytes | None:
    """The bytes that byte-level `text` stands for, or None when it is not byte-level text."""
    plain = text.translate(_to_bytes_table())
    if len(plain) != len(text):
        return None
    try:
        return plain.encode("latin-1")
    except UnicodeEncodeError:
        return None


def text_to_token(text: str, where: str) -> bytes:
    token = byte_level_token(text)
    if token is None:
        raise TokenizerError(f"{where}: token {text!r} is not byte-level BPE text")
    return token


def merge_list(ranks: Mapping[bytes, int]) -> list[tuple[bytes, bytes]]:
    """Every split of every multi-byte token into two tokens, in the order of the token's rank."""
    out: list[tuple[bytes, bytes]] = []
    for token, _rank in sorted(ranks.items(), key=lambda item: item[1]):
        for cut in range(1, len(token)):
            left, right = token[:cut], token[cut:]
            if left in ranks and right in ranks:
                out.append((left, right))
    return out


def check_ranks(ranks: Mapping[bytes, int], where: str) -> None:
    """A byte-level BPE needs all 256 single bytes and one id per token."""
    missing = [b for b in range(256) if bytes([b]) not in ranks]
    if missing:
        raise TokenizerError(
            f"{where}: not a byte-level BPE tokenizer ({len(missing)} of the 256 byte tokens are missing)"
        )
    if len(set(ranks.values())) != len(ranks):
        raise TokenizerError(f"{where}: two tokens share one id")


# --- Hugging Face tokenizer.json -------------------------------------------------------------


def hf_tokenizer_json(
    ranks: Mapping[bytes, int],
    special_tokens: Mapping[str, int],
    pattern: str,
    specials_in_vocab: bool = True,
) -> dict[str, Any]:
    """The `tokenizer.json` document that `tokenizers.Tokenizer.from_file` loads.

    Special tokens go in `added_tokens` and, with `specials_in_vocab`, in the model vocab too, as
    Hugging Face writes them: `tokenizers` ignores the id of an added token that is not in the
    vocab and numbers it after the vocab, which moves any special that does not come last.
    """
    text = {token: token_to_text(token) for token in ranks}
    vocab = {text[t]: i for t, i in ranks.items()}
    if specials_in_vocab:
        vocab.update(special_tokens)
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [
            {
                "id": idx,
                "content": text,
                "single_word": False,
                "lstrip": False,
                "rstrip": False,
                "normalized": False,
                "special": True,
            }
            for text, idx in sorted(special_tokens.items(), key=lambda item: item[1])
        ],
        "normalizer": None,
        "pre_tokenizer": {
            "type": "Sequence",
            "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated", "invert": False},
                {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False},
            ],
        },
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": True,
            "vocab": dict(sorted(vocab.items(), key=lambda item: item[1])),
            "merges": [[text[a], text[b]] for a, b in merge_list(ranks)],
        },
    }


def canonical_json_bytes(doc: Mapping[str, Any]) -> bytes:
    """The exact bytes scratchlm writes for a tokenizer.json (the tokenizer hash is taken on them).

    Indented like Hugging Face's own files, with one vocab entry and one merge per line; the two
    big tables are written with the C string quoter, which is many times faster than `indent=`,
    into placeholders that occur nowhere else in the document (`_placeholder_text`).
    """
    model = doc["model"]
    text, vocab_tag, merges_tag = _placeholder_text(doc)
    vocab = ",\n".join(f"      {quote(k)}: {int(v)}" for k, v in model["vocab"].items())
    merges = ",\n".join(f"      [{quote(a)}, {quote(b)}]" for a, b in model["merges"])
    tables = {vocab_tag: "{\n" + vocab + "\n    }" if vocab else "{}", merges_tag: "[\n" + merges + "\n    ]" if merges else "[]"}
    # One pass: a vocab entry spelled like the merges' placeholder must not be replaced in turn.
    text = re.sub("|".join(map(re.escape, tables)), lambda found: tables[found.group()], text)
    return (text + "\n").encode("utf-8")


def _placeholder_text(doc: Mapping[str, Any]) -> tuple[str, str, str]:
    """`doc` as indented JSON with its model's vocab and merges as two placeholder strings, and
    those two strings as they appear in it. A placeholder is lengthened until it appears once:
    a special token or template may hold the same text (`@VOCAB@`), and must not be replaced."""
    fence = "@"
    while True:
        vocab_tag, merges_tag = f'"{fence}VOCAB{fence}"', f'"{fence}MERGES{fence}"'
        light = {**doc, "model": {**doc["model"], "vocab": vocab_tag[1:-1], "merges": merges_tag[1:-1]}}
        text = json.dumps(light, ensure_ascii=False, indent=2)
        if text.count(vocab_tag) == 1 and text.count(merges_tag) == 1:
            return text, vocab_tag, merges_tag
        fence += "@"


def _hf_pattern(pre: Any, where: str) -> str:
    """The regex of a byte-level pre-tokenizer, or an error for anything else."""
    if not isinstance(pre, dict):
        raise TokenizerError(f"{where}: no byte-level pre-tokenizer")
    kind = pre.get("type")
    if kind == "ByteLevel":
        if pre.get("add_prefix_space"):
            raise TokenizerError(f"{where}: ByteLevel with add_prefix_space=true is not supported")
        if pre.get("use_regex", True):
            return GPT2_PATTERN
        raise TokenizerError(f"{where}: ByteLevel pre-tokenizer without a split pattern")
    if kind == "Sequence":
        steps = pre.get("pretokenizers")
        if not isinstance(steps, list) or not all(isinstance(step, dict) for step in steps):
            raise TokenizerError(
                f"{where}: Sequence pre-tokenizer whose pretokenizers are not a list of objects"
            )
        if len(steps) == 1:
            return _hf_pattern(steps[0], where)
        if len(steps) == 2 and _is_isolated_split(steps[0]) and _is_bare_byte_level(steps[1]):
            return _split_regex(steps[0], where)
    raise TokenizerError(f"{where}: pre-tokenizer {brief(kind)} is not supported (need byte-level BPE)")


def _is_isolated_split(step: dict[str, Any]) -> bool:
    return (
        step.get("type") == "Split" and step.get("behavior") == "Isolated" and not step.get("invert", False)
    )


def _is_bare_byte_level(step: dict[str, Any]) -> bool:
    """ByteLevel that only maps bytes to text (the Split before it cuts the words)."""
    return (
        step.get("type") == "ByteLevel"
        and not step.get("use_regex", True)
        and not step.get("add_prefix_space", False)
    )


def _split_regex(step: dict[str, Any], where: str) -> str:
    pattern = step.get("pattern")
    if not isinstance(pattern, dict) or not isinstance(pattern.get("Regex"), str):
        raise TokenizerError(
            f"{where}: Split pattern {brief(pattern)} is not supported (need a Regex string)"
        )
    return pattern["Regex"]


def _check_merge_order(merges: list[tuple[bytes, bytes]], ranks: Mapping[bytes, int], where: str) -> None:
    """Ids must follow merge order, so that an id can serve as the merge priority (tiktoken's rule).

    Several merges may make one token (scratchlm writes every split of a token) only as one run of
    lines: Hugging Face ranks each line apart, so another token's merge between two of them would
    be preferred by Hugging Face over the later line but not by tiktoken, which ranks them alike.
    A repeated merge line is refused too: Hugging Face keeps the rank of its last copy.
    """
    highest = -1
    made_before: set[bytes] = set()
    seen: dict[tuple[bytes, bytes], int] = {}
    previous: bytes | None = None
    for line, (left, right) in enumerate(merges, start=1):
        for part in (left, right):
            if part not in ranks:
                raise TokenizerError(f"{where}: merge {line} uses {part!r}, which is not in the vocab")
        first = seen.setdefault((left, right), line)
        if first != line:
            raise TokenizerError(
                f"{where}: merge {line} ({token_to_text(left)} {token_to_text(right)}) repeats merge {first}; "
                "Hugging Face would rank it by its last copy"
            )
        token = left + right
        made = ranks.get(token)
        if made is None:
            raise TokenizerError(f"{where}: merge {line} makes {token!r}, which is not in the vocab")
        if token == previous:  # another split of the token the line before makes
            continue
        if token in made_before:
            raise TokenizerError(
                f"{where}: merge {line} makes {token_to_text(token)!r} again after merges of other tokens; "
                "Hugging Face would rank the two ways apart, scratchlm cannot"
            )
        made_before.add(token)
        previous = token
        if made <= highest:
            raise TokenizerError(
                f"{where}: merge {line} is out of the order of the token ids (id {made} after {highest})"
            )
        highest = made


def _merge_list_bpe(token: bytes, merge_rank: Mapping[tuple[bytes, bytes], int]) -> list[bytes]:
    """Hugging Face's BPE of one word by its merge list: the adjacent pair whose merge line comes
    first is merged (the leftmost where it occurs twice), until no listed pair is left."""
    parts = [token[i : i + 1] for i in range(len(token))]
    while len(parts) > 1:
        best, at = None, -1
        for i in range(len(parts) - 1):
            rank = merge_rank.get((parts[i], parts[i + 1]))
            if rank is not None and (best is None or rank < best):
                best, at = rank, i
        if best is None:
            break
        parts[at : at + 2] = [parts[at] + parts[at + 1]]
    return parts


def _check_tokens_assemble(
    merges: list[tuple[bytes, bytes]], ranks: Mapping[bytes, int], ignore_merges: bool, where: str
) -> None:
    """Every multi-byte token must be what the merge list makes of its own bytes.

    Otherwise tiktoken's rule gives other ids than the merge list: it looks a whole word up (where
    Hugging Face, without `ignore_merges`, would return the pieces) and it merges any two adjacent
    tokens that make a token, where Hugging Face merges only listed pairs. (A listed merge order
    that ids follow makes both rules agree wherever the second does not bite, and it can only bite
    on pieces that also meet when the token's own bytes are merged.)

    Files with `ignore_merges` pass: they are tiktoken vocabularies written for Hugging Face (Llama
    3's lacks merges for 588 of its tokens) or scratchlm's own layout, and tiktoken's rule, which
    scratchlm runs, is their original. Checked on import only (`Tokenizer.from_hf`, `from_gpt2`):
    simulating every token costs about 0.4 s at 50,000 tokens, too much for every load.
    """
    if ignore_merges:
        return
    merge_rank = {pair: line for line, pair in enumerate(merges)}
    for token, idx in sorted(ranks.items(), key=lambda item: item[1]):
        if len(token) < 2:
            continue
        parts = _merge_list_bpe(token, merge_rank)
        if len(parts) != 1:
            shown = " ".join(token_to_text(part) for part in parts)
            raise TokenizerError(
                f"{where}: token {token_to_text(token)!r} (id {idx}) is not made by the merges from its "
                f"own bytes (they stop at {shown!r}; a truncated or reordered merges list?), so scratchlm, "
                "which merges by id, would give other ids than Hugging Face"
            )


def _bpe_model(doc: Any, where: str) -> dict[str, Any]:
    """The `model` section, checked to be a byte-level BPE this reader understands."""
    if not isinstance(doc, dict) or not isinstance(doc.get("model"), dict):
        raise TokenizerError(f"{where}: not a Hugging Face tokenizer.json (no 'model' section)")
    model = doc["model"]
    if model.get("type", "BPE") != "BPE":
        raise TokenizerError(f"{where}: model type {brief(model.get('type'))} is not BPE")
    if not isinstance(model.get("vocab"), dict):
        raise TokenizerError(f"{where}: the BPE model has no vocab object")
    if not isinstance(model.get("merges"), list):
        raise TokenizerError(f"{where}: the BPE model has no merges list")
    for key in ("continuing_subword_prefix", "end_of_word_suffix"):
        if model.get(key):
            raise TokenizerError(f"{where}: BPE option {key} is not supported")
    if model.get("dropout") not in (None, 0):  # random merges skipped while encoding
        raise TokenizerError(f"{where}: BPE dropout {brief(model.get('dropout'))} is not supported (need null or 0)")
    if doc.get("normalizer"):
        raise TokenizerError(f"{where}: tokenizers with a normalizer are not supported")
    return model


def _added_tokens(entries: Any, vocab: Mapping[str, Any], where: str) -> dict[str, int]:
    """`added_tokens` as special-token text -> id, refusing what scratchlm cannot reproduce."""
    if entries is None:
        return {}
    if not isinstance(entries, list):
        raise TokenizerError(f"{where}: added_tokens is {brief(entries)}, not a list")
    specials: dict[str, int] = {}
    highest: int | None = None  # the highest added id so far (kept, not recomputed per token)
    for entry in entries:
        if (
            not isinstance(entry, dict)
            or not isinstance(entry.get("content"), str)
            or not entry["content"]
            or not is_json_int(entry.get("id"))
        ):
            raise TokenizerError(f"{where}: malformed added_tokens entry {brief(entry)}")
        _check_added_flags(entry, where)
        if entry["content"] not in specials:
            _check_added_id(entry["content"], entry["id"], vocab, highest, where)
        if specials.setdefault(entry["content"], entry["id"]) != entry["id"]:
            raise TokenizerError(f"{where}: added token {brief(entry['content'])} is listed with two ids")
        highest = entry["id"] if highest is None else max(highest, entry["id"])
    return specials


def _check_added_flags(entry: dict[str, Any], where: str) -> None:
    """Refuse added-token options that change Hugging Face's ids in ways tiktoken cannot follow.

    A non-special added token cuts the text before BPE wherever it occurs (`lo` in `llo` too), even
    when it is also an ordinary token; `lstrip`/`rstrip` swallow the spaces beside a special and
    `single_word` matches it only between word boundaries. `normalized` is harmless: tokenizers
    with a normalizer are refused, and without one the normalized text is the text.
    """
    name = brief(entry["content"])
    if entry.get("special") is False:
        raise TokenizerError(
            f"{where}: added token {name} is not special (\"special\": false); Hugging Face splits text at it "
            "before BPE, which scratchlm cannot reproduce"
        )
    for flag in ("lstrip", "rstrip", "single_word"):
        if entry.get(flag):
            raise TokenizerError(f"{where}: added token {name} has {flag}=true, which scratchlm does not support")


def _check_added_id(content: str, declared: int, vocab: Mapping[str, Any], highest: int | None, where: str) -> None:
    """An added token that is not in the vocab gets the id Hugging Face gives it, not the one written:
    the vocab's size for the first such token, then one past the highest added id. A file whose
    ids differ would give other ids in `tokenizers` than here, so it is refused."""
    if content in vocab:
        return
    size = len(vocab)
    given = size if highest is None or highest < size else highest + 1
    if declared != given:
        raise TokenizerError(
            f"{where}: added token {brief(content)} has id {declared} but is not in the vocab, so Hugging "
            f"Face gives it id {given}; list it in the model vocab with its id"
        )


def _ordinary_ranks(vocab: dict[str, Any], specials: Mapping[str, int], where: str) -> dict[bytes, int]:
    """The vocab without the special tokens: Hugging Face lists specials in the vocab too."""
    ranks: dict[bytes, int] = {}
    for text, idx in vocab.items():
        if not is_json_int(idx):
            raise TokenizerError(f"{where}: vocab id of {brief(text)} is {brief(idx)}, not an integer")
        if text not in specials:
            ranks[text_to_token(text, where)] = idx
        elif idx != specials[text]:
            raise TokenizerError(
                f"{where}: special token {brief(text)} has id {specials[text]} in added_tokens "
                f"but id {idx} in the vocab"
            )
    return ranks


def _hf_merges(
    items: list[Any], ranks: Mapping[bytes, int], specials: Mapping[str, int], where: str
) -> list[tuple[bytes, bytes]]:
    """Merges written as "left right" strings or as [left, right] pairs.

    A merge that makes or uses a special token's text is refused as such: the special left the
    ordinary tokens, and "not in the vocab" would send the user looking for a token that is there.
    """
    known = {token_to_text(t): t for t in ranks}
    merges: list[tuple[bytes, bytes]] = []
    for item in items:
        parts = item.split(" ") if isinstance(item, str) else item
        if not isinstance(parts, list) or len(parts) != 2 or not all(isinstance(p, str) for p in parts):
            raise TokenizerError(f"{where}: malformed merge {brief(item)}")
        special = next((text for text in (*parts, "".join(parts)) if text in specials), None)
        if special is not None:
            raise TokenizerError(
                f"{where}: merge {brief(item)} makes or uses {brief(special)}, which added_tokens makes a special "
                "token; scratchlm cannot have a special token that is also an ordinary one"
            )
        left, right = known.get(parts[0]), known.get(parts[1])
        if left is None or right is None:
            raise TokenizerError(f"{where}: merge {brief(item)} uses a token that is not in the vocab")
        merges.append((left, right))
    return merges


def read_hf_tokenizer(path: str | Path, imported: bool = False) -> tuple[dict[bytes, int], dict[str, int], str]:
    """Read a Hugging Face byte-level BPE `tokenizer.json`: (ranks, special tokens, pattern); an
    `imported` file is also checked to assemble every token (`_check_tokens_assemble`)."""
    path = Path(path)
    where = str(path)
    doc = read_json(path, TokenizerError)
    model = _bpe_model(doc, where)
    pattern = _hf_pattern(doc.get("pre_tokenizer"), where)
    specials = _added_tokens(doc.get("added_tokens"), model["vocab"], where)
    ranks = _ordinary_ranks(model["vocab"], specials, where)
    check_ranks(ranks, where)
    merges = _hf_merges(model["merges"], ranks, specials, where)
    _check_merge_order(merges, ranks, where)
    if imported:
        _check_tokens_assemble(merges, ranks, bool(model.get("ignore_merges")), where)
    clash = set(specials.values()) & set(ranks.values())
    if clash:
        raise TokenizerError(f"{where}: special token ids {sorted(clash)[:5]} are also ordinary token ids")
    return ranks, specials, pattern


_PROCESSORS = ("ByteLevel", "TemplateProcessing", "RobertaProcessing", "BertProcessing", "Sequence")


def carried_post_processor(processor: Any, special_tokens: Mapping[str, int], where: str) -> Any:
    """The source's `post_processor`, checked, for an imported tokenizer.json to keep.

    Its template is how a Hugging Face tokenizer starts every text with a begin-of-text token (as
    Llama 3's does); generation reads it from the saved file, and a model trained with it writes
    poor text without it. Every token it adds must be a special token with the same id here.
    """
    if processor is None:
        return None
    if not isinstance(processor, dict) or processor.get("type") not in _PROCESSORS:
        kind = processor.get("type") if isinstance(processor, dict) else processor
        raise TokenizerError(f"{where}: post_processor {brief(kind)} is not supported")
    if processor["type"] == "Sequence":
        steps = processor.get("processors")
        if not isinstance(steps, list):
            raise TokenizerError(f"{where}: Sequence post_processor without a list of processors")
        for step in steps:
            carried_post_processor(step, special_tokens, where)
    for name, ids in _processor_tokens(processor, where):
        if not isinstance(name, str) or any(special_tokens.get(name) != idx for idx in ids):
            raise TokenizerError(
                f"{where}: post_processor adds {brief(name)} with ids {brief(ids)}, which is not a special token "
                "with that id here"
            )
    return processor


def _processor_tokens(processor: dict[str, Any], where: str) -> list[tuple[Any, list[Any]]]:
    """(token text, ids) for each token a TemplateProcessing or Roberta/Bert processor adds."""
    kind = processor["type"]
    if kind in ("RobertaProcessing", "BertProcessing"):
        pairs = [processor.get("cls"), processor.get("sep")]
        if not all(isinstance(pair, list) and len(pair) == 2 for pair in pairs):
            raise TokenizerError(f"{where}: {kind} post_processor needs cls and sep as [token, id]")
        return [(pair[0], [pair[1]]) for pair in pairs]
    if kind != "TemplateProcessing":
        return []
    table = processor.get("special_tokens")
    if not isinstance(table, dict) or not all(
        isinstance(entry, dict) and isinstance(entry.get("ids"), list) for entry in table.values()
    ):
        raise TokenizerError(f"{where}: TemplateProcessing post_processor without a special_tokens table of ids")
    return [(name, entry["ids"]) for name, entry in table.items()]


def carried_config(config: Any, special_tokens: Mapping[str, int], where: str) -> dict[str, Any]:
    """What to keep on import from a source `tokenizer_config.json`: its `bos_token`, `eos_token` and
    `pad_token` (generation stops at the source's end-of-sequence token, which need not be
    `<|endoftext|>`), and its `chat_template` (a source's own turn markers; the ChatML template
    scratchlm writes for its own tokenizers would name tokens this one may not have)."""
    if not isinstance(config, dict):
        raise TokenizerError(f"{where}: expected a JSON object")
    kept: dict[str, Any] = {}
    for key in ("bos_token", "eos_token", "pad_token"):
        if key not in config:
            continue
        value = config[key]
        name = value.get("content") if isinstance(value, dict) else value  # older files: an AddedToken
        if name is not None and not isinstance(name, str):
            raise TokenizerError(f"{where}: {key} is {brief(value)}, not a token's text")
        if name is not None and name not in special_tokens:
            raise TokenizerError(f"{where}: {key} {brief(name)} is not a special token of the tokenizer")
        kept[key] = name
    if "chat_template" in config:
        kept["chat_template"] = checked_chat_template(config["chat_template"], where)
    return kept


def checked_chat_template(template: Any, where: str) -> str | list[dict[str, str]] | None:
    """A chat template as transformers stores it: one Jinja string, or a list of named ones."""
    named = isinstance(template, list) and all(
        isinstance(entry, dict) and isinstance(entry.get("name"), str) and isinstance(entry.get("template"), str)
        for entry in template
    )
    if template is not None and not isinstance(template, str) and not named:
        raise TokenizerError(f"{where}: chat_template is {brief(template)}, not a template or a list of named ones")
    return template


# --- GPT-2 encoder.json + vocab.bpe ----------------------------------------------------------


def read_gpt2(encoder_json: str | Path, vocab_bpe: str | Path) -> tuple[dict[bytes, int], dict[str, int]]:
    """Read GPT-2's files: (ranks, special tokens). A delimited token no merge makes, like
    `<|endoftext|>`, is a special token; any other token no merge makes is refused."""
    enc_where, bpe_where = str(encoder_json), str(vocab_bpe)
    encoder = read_json(encoder_json, TokenizerError)
    lines = read_text_file(vocab_bpe, TokenizerError).splitlines()
    if not isinstance(encoder, dict) or not all(is_json_int(v) for v in encoder.values()):
        raise TokenizerError(f"{enc_where}: expected a JSON object of token -> id")
    merges: list[tuple[bytes, bytes]] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip() or (number == 1 and line.startswith("#")):
            continue
        parts = line.split(" ")
        if len(parts) != 2:
            raise TokenizerError(f"{bpe_where}:{number}: expected two tokens separated by one space")
        merges.append(
            (
                text_to_token(parts[0], f"{bpe_where}:{number}"),
                text_to_token(parts[1], f"{bpe_where}:{number}"),
            )
        )
    made = {a + b for a, b in merges}
    ranks: dict[bytes, int] = {}
    specials: dict[str, int] = {}
    for text, idx in encoder.items():
        token = byte_level_token(text)
        if token is not None and (len(token) == 1 or token in made):
            ranks[token] = idx
        elif _looks_special(text):
            specials[text] = idx
        else:
            raise TokenizerError(
                f"{bpe_where}: no merge makes token {text!r} (id {idx}) of {enc_where}; is {bpe_where} "
                "truncated? (only delimited tokens such as <|endoftext|> may be made by no merge)"
            )
    check_ranks(ranks, enc_where)
    _check_merge_order(merges, ranks, bpe_where)
    _check_tokens_assemble(merges, ranks, False, bpe_where)
    return ranks, specials


def _looks_special(text: str) -> bool:
    """A token such files hold outside the merges on purpose, like `<|endoftext|>` or `[PAD]`: any
    other token no merge makes is a sign of a damaged vocab.bpe, and turned into a special token it
    would be refused in text that Hugging Face encodes."""
    return len(text) > 2 and (text[0], text[-1]) in (("<", ">"), ("[", "]"))


# --- tiktoken -------------------------------------------------------------------------------


def tiktoken_rank_lines(ranks: Mapping[bytes, int]) -> str:
    """tiktoken's `.tiktoken` text: one `base64(token) rank` line per token, by rank."""
    return "".join(
        f"{base64.b64encode(token).decode('ascii')} {rank}\n"
        for token, rank in sorted(ranks.items(), key=lambda item: item[1])
    )


def tokenizer_config(special_tokens: Mapping[str, int], pattern_label: str) -> dict[str, Any]:
    """`tokenizer_config.json` for `transformers`: special tokens, and the ChatML chat template when
    its two markers are special tokens (otherwise the template's markers would be split into
    plain pieces of text)."""
    names = list(special_tokens)
    eot = "<|endoftext|>" if "<|endoftext|>" in special_tokens else None
    pad = "<|pad|>" if "<|pad|>" in special_tokens else None
    chatml = all(marker in special_tokens for marker in CHATML_MARKERS)
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": eot,
        "eos_token": eot,
        "pad_token": pad,
        "unk_token": None,
        "additional_special_tokens": [n for n in names if n not in (eot, pad)],
        "added_tokens_decoder": {
            str(idx): {
                "content": text,
                "lstrip": False,
                "normalized": False,
                "rstrip": False,
                "single_word": False,
                "special": True,
            }
            for text, idx in sorted(special_tokens.items(), key=lambda item: item[1])
        },
        "clean_up_tokenization_spaces": False,
        "model_max_length": 1000000000000000019884624838656,
        **({"chat_template": CHATML_TEMPLATE} if chatml else {}),
        "scratchlm_pattern": pattern_label,
    }
