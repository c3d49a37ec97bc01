"""The byte-level BPE trainer: count words, then merge the most frequent pair until the vocab is full.

Two phases, each built for speed in Python:

1. Word counting. The text is cut into words by the pre-tokenization regex and the words are
   counted. Large inputs are cut into chunks of documents that worker processes count on their own
   (`workers` > 1); the parent merges the per-chunk counts, and only a few chunks are in flight at
   once, so memory stays bounded by the number of *distinct* words, not the corpus size.

2. Merging. Each distinct word becomes a sequence of token ids (its UTF-8 bytes to begin with,
   held as a `str` with one character per token) with its count as a weight. Pair counts live in
   a dict, with an index from each pair to the words that contain it, and a heap orders pairs by
   count. A merge rewrites only the words in the index of the merged pair and adjusts only the
   counts of the pairs around each rewritten spot; the heap is never rebuilt: stale entries are
   detected when popped (their stored count differs from the current one) and pushed back with
   the current count ("lazy invalidation").

Tie-breaking is deterministic: the pair with the highest count wins; among equal counts, the pair
whose (left bytes, right bytes) is lexicographically smallest wins. The result therefore does not
depend on the number of workers, on dict order or on the machine.
"""

from __future__ import annotations

import heapq
import re
import sys
from collections import Counter
from collections.abc import Collection, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor

import numpy as np

from scratchlm.data.parallel import die_with_parent, ordered_map, pool_context
from scratchlm.errors import TokenizerError
from scratchlm.progress import progress
from scratchlm.tokenizer.patterns import GPT2_PATTERN, GPT4_PATTERN, encodable_text, word_finder


class NoTextError(TokenizerError):
    """Training texts with no word but whitespace (or no word at all)."""


# Documents are grouped into chunks of about this many characters for the counting workers.
CHUNK_CHARS = 1 << 20


def _count_chunk(pattern: str, texts: Sequence[str]) -> dict[str, int]:
    """Count the words of a few documents (runs in a worker process or inline), cut from the
    text that encoding cuts (`encodable_text`)."""
    findall = word_finder(pattern)
    if len(texts) == 1:
        return Counter(findall(encodable_text(texts[0])))
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(findall(encodable_text(text)))
    return counts


# Places where a long document can be cut without changing a single word. Under gpt4 a word never
# runs past a newline followed by a non-space character; under gpt2 a word never joins a non-space
# character to the newline after it (cutting after the newline would change gpt2's `\s+(?!\S)`).
_SAFE_CUTS = {
    GPT4_PATTERN: re.compile(r"\n(?=\S)"),
    GPT2_PATTERN: re.compile(r"(?<=\S)(?=\n)"),
}


def _pieces(text: str, limit: int, cut: re.Pattern | None) -> Iterator[str]:
    """A document, cut into pieces of about `limit` characters where that changes no word."""
    if len(text) <= limit or cut is None:
        yield text
        return
    start = 0
    while len(text) - start > limit:
        found = cut.search(text, start + limit)
        if found is None:
            break
        yield text[start : found.end()]
        start = found.end()
    yield text[start:]


def _chunks(texts: Iterable[str], chunk_chars: int, cut: re.Pattern | None) -> Iterator[list[str]]:
    chunk: list[str] = []
    size = 0
    for text in texts:
        for piece in _pieces(text, chunk_chars, cut):
            if not piece:
                continue
            chunk.append(piece)
            size += len(piece)
            if size >= chunk_chars:
                yield chunk
                chunk, size = [], 0
    if chunk:
        yield chunk


def _add_counts(total: dict[str, int], part: dict[str, int]) -> None:
    if not total:
        total.update(part)
        return
    get = total.get
    for word, n in part.items():
        total[word] = get(word, 0) + n


def count_words(
    texts: Iterable[str],
    pattern: str,
    workers: int = 1,
    chunk_chars: int = CHUNK_CHARS,
    show_progress: bool = True,
) -> dict[str, int]:
    """Split every text with `pattern` and count the pieces ("words").

    Memory stays bounded for any input size: documents longer than `chunk_chars` are cut (for the
    preset patterns, at places that change no word) and at most `2 * workers` chunks are queued.
    """
    total: dict[str, int] = {}
    chunks = _chunks(texts, chunk_chars, _SAFE_CUTS.get(pattern))
    if workers <= 1:
        bar = progress(desc="counting words", unit="chunk", disable=None if show_progress else True)
        for chunk in chunks:
            _add_counts(total, _count_chunk(pattern, chunk))
            bar.update(1)
        bar.close()
        return total
    # A process pool, not multiprocessing.Pool: if a worker dies (the out-of-memory killer), Pool
    # waits forever for its lost chunk, deaf even to SIGTERM; this pool ends with a clear error.
    bar = None
    with ProcessPoolExecutor(workers, mp_context=pool_context(), initializer=die_with_parent) as pool:
        jobs = ((None, (pattern, chunk)) for chunk in chunks)
        for _, counts in ordered_map(pool, _count_job, jobs, 2 * workers, "word-counting"):
            if bar is None:  # made once the workers are forked, so its helper thread is not forked along
                bar = progress(desc="counting words", unit="chunk", disable=None if show_progress else True)
            _add_counts(total, counts)
            bar.update(1)
    if bar is not None:
        bar.close()
    return total


def _count_job(job: tuple[str, Sequence[str]]) -> dict[str, int]:
    return _count_chunk(*job)


def _initial_pairs(words: list[str], counts: list[int]) -> tuple[dict[str, int], dict[str, set[int]]]:
    """Count every adjacent pair (weighted by word count) and index the words holding it (numpy)."""
    lengths = np.fromiter(map(len, words), dtype=np.int64, count=len(words))
    flat = np.frombuffer("".join(words).encode("latin-1"), dtype=np.uint8).astype(np.int64)
    word_of = np.repeat(np.arange(len(words), dtype=np.int64), lengths)
    # A pair starts at every position except the last one of each word.
    starts = np.ones(len(flat), dtype=bool)
    starts[np.cumsum(lengths) - 1] = False
    pos = np.nonzero(starts)[0]
    keys = flat[pos] * 256 + flat[pos + 1]
    owners = word_of[pos]
    weights = np.asarray(counts, dtype=np.int64)[owners]
    order = np.argsort(keys, kind="stable")
    keys, owners, weights = keys[order], owners[order], weights[order]
    uniq, first = np.unique(keys, return_index=True)
    sums = np.add.reduceat(weights, first).tolist() if len(keys) else []
    names = [chr(k >> 8) + chr(k & 255) for k in uniq.tolist()]
    bounds = np.append(first, len(keys)).tolist()
    owner_list = owners.tolist()
    pair_counts = dict(zip(names, sums))
    where = {name: set(owner_list[bounds[i] : bounds[i + 1]]) for i, name in enumerate(names)}
    return pair_counts, where


def learn_merges(
    word_counts: dict[str, int] | dict[bytes, int],
    num_new_tokens: int,
    min_frequency: int = 2,
    show_progress: bool = True,
    forbidden: Collection[bytes] = (),
) -> tuple[list[bytes], list[tuple[int, int]]]:
    """Learn up to `num_new_tokens` merges on top of the 256 byte tokens.

    Returns `(vocab, merges)`: `vocab[i]` is the bytes of token id `i` (ids 0-255 are the single
    bytes), `merges[k]` the pair of ids merged at step `k`. Stops early when the best pair occurs
    fewer than `min_frequency` times. If a merge yields bytes that already are a token (possible
    when two different splits of one string are both merged), the existing id is reused, as
    Hugging Face's trainer does, and no vocab slot is spent. A merge that would make bytes in
    `forbidden` (special tokens' text, which no ordinary token may share) is never made.

    A word is held as a `str` with one character per token (`chr(id)`), and a pair as the
    two-character string: finding, counting and replacing a pair in a word then run in C
    (`str.find`, `str.replace`, whose left-to-right, non-overlapping rule is exactly BPE's).
    """
    if 256 + num_new_tokens > sys.maxunicode:
        raise ValueError(f"at most {sys.maxunicode - 256} merges are supported")
    vocab = [bytes([i]) for i in range(256)]
    index = {b: i for i, b in enumerate(vocab)}
    forbidden = frozenset(forbidden)
    words: list[str] = []
    counts: list[int] = []
    for word, n in word_counts.items():
        data = word.encode("utf-8") if isinstance(word, str) else word
        if len(data) >= 2 and n > 0:
            words.append(data.decode("latin-1"))  # byte b -> chr(b): one character per token
            counts.append(n)
    merges: list[tuple[int, int]] = []
    if not words or num_new_tokens <= 0:
        return vocab, merges

    pair_counts, where = _initial_pairs(words, counts)
    heap = [(-n, vocab[ord(k[0])], vocab[ord(k[1])], k) for k, n in pair_counts.items()]
    heapq.heapify(heap)
    heappush, heappop = heapq.heappush, heapq.heappop
    get_count = pair_counts.get

    bar = progress(total=num_new_tokens, desc="merging", unit="tok", disable=None if show_progress else True)
    added = 0
    while added < num_new_tokens and heap:
        neg, left_bytes, right_bytes, pair = heappop(heap)
        current = get_count(pair, 0)
        if current != -neg:  # stale: the pair lost occurrences since this entry was pushed
            if current > 0:
                heappush(heap, (-current, left_bytes, right_bytes, pair))
            continue
        if current < min_frequency:
            break
        merged_bytes = left_bytes + right_bytes
        if merged_bytes in forbidden:  # dropped for good: a re-pushed entry is dropped here again
            continue
        c = index.get(merged_bytes)
        if c is None:
            c = len(vocab)
            vocab.append(merged_bytes)
            index[merged_bytes] = c
            added += 1
            if added & 255 == 0:
                bar.update(256)
        merges.append((ord(pair[0]), ord(pair[1])))
        token = chr(c)
        del pair_counts[pair]
        raised: set[str] = set()
        for wi in where.pop(pair):
            w = words[wi]
            if len(w) == 2:  # the whole word becomes one token: no neighbours to update
                if w == pair:
                    words[wi] = token
                continue
            i = w.find(pair)
            if i < 0:  # the index is a superset: this word lost the pair in an earlier merge
                continue
            spots = []  # where the pair starts, left to right, non-overlapping (as str.replace)
            while i >= 0:
                spots.append(i)
                i = w.find(pair, i + 2)
            f = counts[wi]
            n = len(w)
            # Pairs that overlapped the merged spots disappear ...
            done = -1
            for i in spots:
                if i > 0 and i - 1 != done:
                    k = w[i - 1 : i + 1]
                    if k != pair:
                        pair_counts[k] = get_count(k, 0) - f
                if i + 2 < n:
                    k = w[i + 1 : i + 3]
                    if k != pair:
                        pair_counts[k] = get_count(k, 0) - f
                    done = i + 1
            # ... and the pairs around each new token appear (the j-th spot moved j to the left).
            new = w.replace(pair, token)
            m = len(new)
            done = -1
            for j, i in enumerate(spots):
                p = i - j
                if p > 0 and p - 1 != done:
                    k = new[p - 1 : p + 1]
                    pair_counts[k] = get_count(k, 0) + f
                    raised.add(k)
                    s = where.get(k)
                    if s is None:
                        where[k] = {wi}
                    else:
                        s.add(wi)
                if p + 1 < m:
                    k = new[p : p + 2]
                    pair_counts[k] = get_count(k, 0) + f
                    raised.add(k)
                    s = where.get(k)
                    if s is None:
                        where[k] = {wi}
                    else:
                        s.add(wi)
                    done = p
            words[wi] = new
        for k in raised:
            heappush(heap, (-pair_counts[k], vocab[ord(k[0])], vocab[ord(k[1])], k))
    bar.update(added - bar.n)
    bar.close()
    return vocab, merges


def train_bpe(
    texts: Iterable[str],
    num_new_tokens: int,
    pattern: str,
    min_frequency: int = 2,
    workers: int = 1,
    show_progress: bool = True,
    forbidden: Collection[bytes] = (),
) -> tuple[list[bytes], list[tuple[int, int]]]:
    """Count the words of `texts` with `pattern`, then learn merges (see `learn_merges`).

    Raises `NoTextError` when the texts hold no word but whitespace: a tokenizer of bytes (and
    space runs) alone, saved as if trained, would hide the mistake (an empty file, a wrong field).
    """
    word_counts = count_words(texts, pattern, workers=workers, show_progress=show_progress)
    if all(word.isspace() for word in word_counts):  # stops at the first word with text
        raise NoTextError("the training texts are empty or whitespace: nothing to train on")
    return learn_merges(
        word_counts, num_new_tokens, min_frequency, show_progress=show_progress, forbidden=forbidden
    )
