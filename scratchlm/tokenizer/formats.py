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
is refused with the merge line). Their merges are then applied by tiktoken's rule, which matches a
merge list except in a corner that trained BPEs almost never reach: a word whose bytes are a token
but which the merge list would not assemble (tiktoken returns the whole token).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from functools import lru_cache
from json.encoder import encode_basestring as quote  # the C-accelerated quoter
from pathlib import Path
from typing import Any

from scratchlm.errors import TokenizerError
from scratchlm.tokenizer.patterns import GPT2_PATTERN

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


def text_to_token(text: str, where: str) -> bytes:
    plain = text.translate(_to_bytes_table())
    try:
        if len(plain) == len(text):
            return plain.encode("latin-1")
    except UnicodeEncodeError:
        pass
    raise TokenizerError(f"{where}: token {text!r} is not byte-level BPE text")


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
    ranks: Mapping[bytes, int], special_tokens: Mapping[str, int], pattern: str
) -> dict[str, Any]:
    """The `tokenizer.json` document that `tokenizers.Tokenizer.from_file` loads."""
    text = {token: token_to_text(token) for token in ranks}
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
            "vocab": {text[t]: i for t, i in sorted(ranks.items(), key=lambda item: item[1])},
            "merges": [[text[a], text[b]] for a, b in merge_list(ranks)],
        },
    }


def canonical_json_bytes(doc: Mapping[str, Any]) -> bytes:
    """The exact bytes scratchlm writes for a tokenizer.json (the tokenizer hash is taken on them).

    Indented like Hugging Face's own files, with one vocab entry and one merge per line; the two
    big tables are written with the C string quoter, which is many times faster than `indent=`.
    """
    model = doc["model"]
    light = {**doc, "model": {**model, "vocab": "@VOCAB@", "merges": "@MERGES@"}}
    text = json.dumps(light, ensure_ascii=False, indent=2)
    vocab = ",\n".join(f"      {quote(k)}: {int(v)}" for k, v in model["vocab"].items())
    merges = ",\n".join(f"      [{quote(a)}, {quote(b)}]" for a, b in model["merges"])
    text = text.replace('"@VOCAB@"', "{\n" + vocab + "\n    }" if vocab else "{}", 1)
    text = text.replace('"@MERGES@"', "[\n" + merges + "\n    ]" if merges else "[]", 1)
    return (text + "\n").encode("utf-8")


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
        steps = pre.get("pretokenizers") or []
        if (
            len(steps) == 2
            and steps[0].get("type") == "Split"
            and steps[0].get("behavior") == "Isolated"
            and not steps[0].get("invert", False)
            and isinstance(steps[0].get("pattern"), dict)
            and "Regex" in steps[0]["pattern"]
            and steps[1].get("type") == "ByteLevel"
            and not steps[1].get("use_regex", True)
            and not steps[1].get("add_prefix_space", False)
        ):
            return steps[0]["pattern"]["Regex"]
        if len(steps) == 1:
            return _hf_pattern(steps[0], where)
    raise TokenizerError(f"{where}: pre-tokenizer {kind!r} is not supported (need byte-level BPE)")


def _check_merge_order(merges: list[tuple[bytes, bytes]], ranks: Mapping[bytes, int], where: str) -> None:
    """Ids must follow merge order, so that an id can serve as the merge priority (tiktoken's rule)."""
    highest = -1
    made_before: set[bytes] = set()
    for line, (left, right) in enumerate(merges, start=1):
        for part in (left, right):
            if part not in ranks:
                raise TokenizerError(f"{where}: merge {line} uses {part!r}, which is not in the vocab")
        token = left + right
        made = ranks.get(token)
        if made is None:
            raise TokenizerError(f"{where}: merge {line} makes {token!r}, which is not in the vocab")
        if token in made_before:  # another way to make a token made earlier
            continue
        made_before.add(token)
        if made <= highest:
            raise TokenizerError(
                f"{where}: merge {line} is out of the order of the token ids (id {made} after {highest})"
            )
        highest = made


def read_hf_tokenizer(path: str | Path) -> tuple[dict[bytes, int], dict[str, int], str]:
    """Read a Hugging Face byte-level BPE `tokenizer.json`: (ranks, special tokens, pattern)."""
    path = Path(path)
    where = str(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TokenizerError(f"{where}: file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise TokenizerError(f"{where}: not a valid JSON tokenizer file ({e})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("model"), dict):
        raise TokenizerError(f"{where}: not a Hugging Face tokenizer.json (no 'model' section)")
    model = doc["model"]
    if model.get("type", "BPE") != "BPE" or "merges" not in model or not isinstance(model.get("vocab"), dict):
        raise TokenizerError(f"{where}: model type {model.get('type')!r} is not BPE")
    for key in ("continuing_subword_prefix", "end_of_word_suffix"):
        if model.get(key):
            raise TokenizerError(f"{where}: BPE option {key} is not supported")
    if doc.get("normalizer"):
        raise TokenizerError(f"{where}: tokenizers with a normalizer are not supported")
    pattern = _hf_pattern(doc.get("pre_tokenizer"), where)

    specials: dict[str, int] = {}
    for entry in doc.get("added_tokens") or []:
        try:
            specials[str(entry["content"])] = int(entry["id"])
        except (KeyError, TypeError, ValueError):
            raise TokenizerError(f"{where}: malformed added_tokens entry {entry!r}") from None
    ranks: dict[bytes, int] = {}
    for text, idx in model["vocab"].items():
        if text in specials:
            continue
        if not isinstance(idx, int):
            raise TokenizerError(f"{where}: vocab id of {text!r} is not an integer")
        ranks[text_to_token(text, where)] = idx
    check_ranks(ranks, where)
    known = {token_to_text(t): t for t in ranks}
    merges: list[tuple[bytes, bytes]] = []
    for item in model["merges"]:
        parts = item.split(" ") if isinstance(item, str) else item
        if not isinstance(parts, list) or len(parts) != 2:
            raise TokenizerError(f"{where}: malformed merge {item!r}")
        left, right = known.get(str(parts[0])), known.get(str(parts[1]))
        if left is None or right is None:
            raise TokenizerError(f"{where}: merge {item!r} uses a token that is not in the vocab")
        merges.append((left, right))
    _check_merge_order(merges, ranks, where)
    clash = set(specials.values()) & set(ranks.values())
    if clash:
        raise TokenizerError(f"{where}: special token ids {sorted(clash)[:5]} are also ordinary token ids")
    return ranks, specials, pattern


# --- GPT-2 encoder.json + vocab.bpe ----------------------------------------------------------


def read_gpt2(encoder_json: str | Path, vocab_bpe: str | Path) -> tuple[dict[bytes, int], dict[str, int]]:
    """Read GPT-2's files: (ranks, special tokens). A token no merge makes (and not a single byte)
    is a special token, like `<|endoftext|>`."""
    enc_where, bpe_where = str(encoder_json), str(vocab_bpe)
    try:
        encoder = json.loads(Path(encoder_json).read_text(encoding="utf-8"))
        lines = Path(vocab_bpe).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError as e:
        raise TokenizerError(f"{e.filename}: file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise TokenizerError(f"{enc_where}: not a valid GPT-2 encoder.json ({e})") from None
    if not isinstance(encoder, dict) or not all(isinstance(v, int) for v in encoder.values()):
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
    table = unicode_to_bytes()
    for text, idx in encoder.items():
        if len(text) == 1 and text in table:
            ranks[bytes([table[text]])] = idx
            continue
        token = bytes(table[ch] for ch in text) if all(ch in table for ch in text) else None
        if token is not None and token in made:
            ranks[token] = idx
        else:
            specials[text] = idx
    check_ranks(ranks, enc_where)
    _check_merge_order(merges, ranks, bpe_where)
    return ranks, specials


# --- tiktoken -------------------------------------------------------------------------------


def tiktoken_rank_lines(ranks: Mapping[bytes, int]) -> str:
    """tiktoken's `.tiktoken` text: one `base64(token) rank` line per token, by rank."""
    return "".join(
        f"{base64.b64encode(token).decode('ascii')} {rank}\n"
        for token, rank in sorted(ranks.items(), key=lambda item: item[1])
    )


def tokenizer_config(special_tokens: Mapping[str, int], pattern_label: str) -> dict[str, Any]:
    """`tokenizer_config.json` for `transformers`: special tokens and the ChatML chat template."""
    names = list(special_tokens)
    eot = "<|endoftext|>" if "<|endoftext|>" in special_tokens else None
    pad = "<|pad|>" if "<|pad|>" in special_tokens else None
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
        "chat_template": CHATML_TEMPLATE,
        "scratchlm_pattern": pattern_label,
    }
