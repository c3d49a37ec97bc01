"""Test data for the tokenizer tests: mixed-script text and standard-library source."""

from __future__ import annotations

import json
import sysconfig
from pathlib import Path

from scratchlm.tokenizer.formats import bytes_to_unicode

# Text beyond the standard library's ASCII: prose, accents, CJK, emoji, digits, odd whitespace.
MIXED = [
    "The quick brown fox jumps over the lazy dog. It's 12345 o'clock; we'll see, they've gone!",
    "Ünïcödé àccents — naïve café, Straße; Ελληνικά; русский текст; עברית; العربية",
    "日本語のテキストと中文文本，还有한국어 텍스트.",
    "emoji 🤖🚀👍🏽 and flags 🇫🇷, zero-width\u200bjoiner\u200d, tabs\tand\r\nCRLF\n\n\n   indented",
    "def f(x):\n    return x ** 2  # comment\n\n\tif x == 0:\n\t\tpass\n",
    "numbers 3.14159 1,000,000 2024-01-01 0x1F 1e-9 99999999999",
    "   leading and trailing spaces   \n   ",
    "SHOUTING 'S 'T 'RE 'VE 'M 'LL 'D and it's, don't, I'm, you're",
    "",
]


def stdlib_text(max_bytes: int) -> str:
    """Python source from the standard library, in a fixed order, up to `max_bytes`."""
    root = Path(sysconfig.get_paths()["stdlib"])
    parts, size = [], 0
    for path in sorted(root.glob("*.py")):
        text = path.read_text(encoding="utf-8", errors="replace")
        parts.append(text)
        size += len(text)
        if size >= max_bytes:
            break
    return "".join(parts)


def write_gpt2_pair(tmp_path):
    """A hand-made GPT-2 style pair: byte ids in reverse byte order, 8 merges, one special."""
    chars = bytes_to_unicode()
    encoder = {chars[b]: 255 - b for b in range(256)}
    merges = ["l o", "lo w", "e r", "Ġ low", "n e", "ne w", "Ġ new", "low er"]
    for i, line in enumerate(merges):
        encoder[line.replace(" ", "")] = 256 + i
    encoder["<|endoftext|>"] = 264
    (tmp_path / "encoder.json").write_text(json.dumps(encoder))
    (tmp_path / "vocab.bpe").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    return tmp_path / "encoder.json", tmp_path / "vocab.bpe"


def hf_byte_level_bpe(texts: list[str], vocab_size: int):
    """A byte-level BPE trained by Hugging Face `tokenizers` (GPT-2's pre-tokenizer, `<|endoftext|>`
    special), as the files scratchlm imports are made."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers, trainers

    hf = HFTokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    hf.train_from_iterator(texts, trainer)
    return hf
