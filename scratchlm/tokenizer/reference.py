"""A short, slow, pure-Python encoder: the definition the fast path (tiktoken) is tested against.

The rule, as tiktoken applies it: cut the text into words with the pattern; a word that is a
token as a whole is that token; otherwise start from its bytes and keep merging the adjacent pair
whose concatenation is the token of lowest rank (leftmost on ties) until no pair is a token.
"""

from __future__ import annotations

from collections.abc import Mapping

from scratchlm.tokenizer.patterns import encodable_text, word_finder


def encode_word(word: bytes, ranks: Mapping[bytes, int]) -> list[int]:
    if word in ranks:
        return [ranks[word]]
    parts = [word[i : i + 1] for i in range(len(word))]
    while len(parts) > 1:
        best_rank, best_at = None, -1
        for i in range(len(parts) - 1):
            rank = ranks.get(parts[i] + parts[i + 1])
            if rank is not None and (best_rank is None or rank < best_rank):
                best_rank, best_at = rank, i
        if best_rank is None:
            break
        parts[best_at : best_at + 2] = [parts[best_at] + parts[best_at + 1]]
    return [ranks[p] for p in parts]


def encode_ordinary(text: str, pattern: str, ranks: Mapping[bytes, int]) -> list[int]:
    """Encode `text` with no special tokens (their text is encoded like any other text); surrogate
    code points are first repaired as tiktoken repairs them (`encodable_text`)."""
    ids: list[int] = []
    for word in word_finder(pattern)(encodable_text(text)):
        ids.extend(encode_word(word.encode("utf-8"), ranks))
    return ids
