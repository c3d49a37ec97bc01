"""The loader: checked memmaps, and batches that are pure functions of their slot."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from scratchlm.data.loader import (
    Batcher,
    TokenDataset,
    check_tokenizer_match,
    permute,
    validation_batches,
)
from scratchlm.errors import DataError

SHA = "ab" * 32


def write_tokens_dir(path: Path, splits: dict[str, list[list[int]]], dtype: str = "uint16") -> Path:
    """A tokens dir written by hand (documents given as id lists that already end with eot)."""
    path.mkdir(parents=True, exist_ok=True)
    meta_splits = {}
    for split, docs in splits.items():
        lengths = [len(d) for d in docs]
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64) if docs else np.zeros(0)
        flat = np.array([t for d in docs for t in d], dtype=dtype)
        flat.tofile(path / f"{split}.bin")
        starts.astype(np.int64).tofile(path / f"{split}.idx")
        meta_splits[split] = {"tokens": int(flat.size), "documents": len(docs)}
    meta = {"dtype": dtype, "vocab_size": 70000 if dtype == "uint32" else 1000,
            "tokenizer_sha256": SHA, "eot_id": 0, "splits": meta_splits}
    (path / "meta.json").write_text(json.dumps(meta))
    return path


def position_docs(n_tokens: int, doc_len: int) -> list[list[int]]:
    """Documents whose token ids are their positions, so a window tells where it came from."""
    ids = list(range(n_tokens))
    return [ids[i : i + doc_len] for i in range(0, n_tokens, doc_len)]


@pytest.fixture
def tokens_dir(tmp_path: Path) -> Path:
    return write_tokens_dir(
        tmp_path / "tokens",
        {"train": position_docs(1001, 37), "val": position_docs(300, 20)},
        dtype="uint32",
    )


def test_open_maps_tokens_and_documents(tokens_dir: Path) -> None:
    ds = TokenDataset.open(tokens_dir, "train")
    assert len(ds) == 1001
    assert ds.num_documents == 28
    assert ds.meta["tokenizer_sha256"] == SHA
    assert ds.document(1).tolist() == list(range(37, 74))
    assert ds.document(-1).tolist() == list(range(999, 1001))
    assert ds.document_lengths().sum() == 1001
    assert ds.tokens.dtype == np.uint32 and not ds.tokens.flags.writeable
    assert not ds.tokens.flags.owndata  # a view of the memory map, not a copy in RAM


def test_missing_meta_is_one_clear_error(tokens_dir: Path) -> None:
    (tokens_dir / "meta.json").unlink()
    with pytest.raises(DataError, match="no meta.json"):
        TokenDataset.open(tokens_dir, "train")



def test_a_file_given_as_the_tokens_dir_is_not_called_missing(tokens_dir: Path) -> None:
    """Its meta.json given for the dir was refused as "tokens dir not found", a file that exists."""
    with pytest.raises(DataError, match=r"meta\.json: not a directory; give the tokens dir"):
        TokenDataset.open(tokens_dir / "meta.json", "train")
    with pytest.raises(DataError, match="tokens dir not found"):
        TokenDataset.open(tokens_dir / "absent", "train")


@pytest.mark.parametrize("version", [2, 0, "1", 1.5])
def test_a_format_version_this_code_does_not_read_is_refused(tokens_dir: Path, version) -> None:
    """A newer scratchlm's layout read as version 1 would give wrong tokens, not an error."""
    meta_path = tokens_dir / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["format_version"] = version
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(DataError, match="'format_version'.*not one this scratchlm reads"):
        TokenDataset.open(tokens_dir, "train")


@pytest.mark.parametrize("name", ["../outside", "/tmp/outside", "..", ".hidden", ""])
def test_a_split_named_as_a_path_is_refused(tokens_dir: Path, name: str) -> None:
    """A split's files are named after it beside meta.json: "../outside" read a .bin and .idx
    outside the tokens dir as if they were its own."""
    import shutil

    for suffix in (".bin", ".idx"):
        shutil.copyfile(tokens_dir / f"train{suffix}", tokens_dir.parent / f"outside{suffix}")
    meta_path = tokens_dir / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["splits"][name] = meta["splits"]["train"]
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(DataError, match="is not a plain file name"):
        TokenDataset.open(tokens_dir, name)


def test_a_meta_json_from_before_format_version_is_read_as_version_1(tokens_dir: Path) -> None:
    meta_path = tokens_dir / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta.pop("format_version", None)
    meta_path.write_text(json.dumps(meta))
    assert len(TokenDataset.open(tokens_dir, "train")) == 1001


def test_truncated_bin_is_detected(tokens_dir: Path) -> None:
    data = (tokens_dir / "train.bin").read_bytes()
    (tokens_dir / "train.bin").write_bytes(data[:-8])
    with pytest.raises(DataError, match=r"train\.bin: truncated"):
        TokenDataset.open(tokens_dir, "train")


def test_truncated_idx_and_missing_split_are_detected(tokens_dir: Path) -> None:
    data = (tokens_dir / "val.idx").read_bytes()
    (tokens_dir / "val.idx").write_bytes(data[:-8])
    with pytest.raises(DataError, match=r"val\.idx: truncated"):
        TokenDataset.open(tokens_dir, "val")
    with pytest.raises(DataError, match="no 'test' split"):
        TokenDataset.open(tokens_dir, "test")


def test_tokenizer_hash_mismatch(tokens_dir: Path) -> None:
    ds = TokenDataset.open(tokens_dir, "val")
    check_tokenizer_match(ds.meta, SHA)
    with pytest.raises(DataError, match="re-run `scratchlm data tokenize`"):
        check_tokenizer_match(ds.meta, "cd" * 32)


def test_offsets_that_go_backwards_are_a_damaged_idx(tokens_dir: Path) -> None:
    """Passed on, they gave negative document lengths, windows past the end, or in document mode
    the same window for every batch."""
    offsets = np.fromfile(tokens_dir / "train.idx", dtype=np.int64)
    offsets[5] = offsets[-1]
    offsets.tofile(tokens_dir / "train.idx")
    with pytest.raises(DataError, match=r"train\.idx: document offsets do not fit train\.bin"):
        TokenDataset.open(tokens_dir, "train")



def test_offsets_that_repeat_are_a_damaged_idx(tokens_dir: Path) -> None:
    """An .idx of zeros (the right size, its data never written) passed: document mode then gave
    the window at token 0 for every sequence, and inspect documents of no tokens."""
    documents = len(np.fromfile(tokens_dir / "train.idx", dtype=np.int64))
    np.zeros(documents, dtype=np.int64).tofile(tokens_dir / "train.idx")
    with pytest.raises(DataError, match=r"train\.idx: document offsets do not fit train\.bin"):
        TokenDataset.open(tokens_dir, "train")

@pytest.mark.parametrize("mode", ["random", "sequential", "document"])
def test_ids_the_vocabulary_lacks_are_refused_before_they_reach_a_model(tokens_dir: Path, mode: str) -> None:
    """One damaged id used to end in the embedding's IndexError (on a GPU: a device-side assert)."""
    ids = np.fromfile(tokens_dir / "train.bin", dtype=np.uint32)
    ids[::7] = 70_000  # vocab_size is 70,000
    ids.tofile(tokens_dir / "train.bin")
    batcher = Batcher(TokenDataset.open(tokens_dir, "train"), seq_len=16, micro_batch=4, seed=0, mode=mode)
    with pytest.raises(DataError, match=r"train\.bin: holds token ids >= vocab_size 70000"):
        batcher.batch(0)


@pytest.mark.parametrize(("dtype", "vocab_size"), [("uint16", 65_537), ("uint32", 2**40)])
def test_a_vocab_size_the_token_dtype_cannot_hold_is_refused(tokens_dir: Path, dtype: str, vocab_size: int) -> None:
    """An impossible vocab_size sized tables of terabytes in inspect and in the model."""
    meta = json.loads((tokens_dir / "meta.json").read_text())
    (tokens_dir / "meta.json").write_text(json.dumps({**meta, "dtype": dtype, "vocab_size": vocab_size}))
    with pytest.raises(DataError, match=f"'vocab_size' {vocab_size} is more than {dtype} tokens allow"):
        TokenDataset.open(tokens_dir, "train")


def test_counting_tokens_with_a_huge_damaged_id_allocates_no_huge_table() -> None:
    from scratchlm.data.inspect import token_counts

    ids = np.array([1, 2, 2, 0xFFFFFFF0], dtype=np.uint32)
    assert token_counts(ids, 5).tolist() == [0, 1, 2, 0, 0]  # the damaged id is left out, not counted


@pytest.mark.parametrize("mode", ["random", "sequential", "document"])
def test_batches_are_pure_functions_of_their_slot(tokens_dir: Path, mode: str) -> None:
    ds = TokenDataset.open(tokens_dir, "train")
    a = Batcher(ds, seq_len=16, micro_batch=4, seed=7, mode=mode)
    b = Batcher(TokenDataset.open(tokens_dir, "train"), seq_len=16, micro_batch=4, seed=7, mode=mode)
    late_first = b.batch(9, 1, rank=1, world_size=2, grad_accum=2)
    for step in range(10):
        b.batch(step)
    x, y = a.batch(9, 1, rank=1, world_size=2, grad_accum=2)
    assert torch.equal(x, late_first[0]) and torch.equal(y, late_first[1])
    assert x.dtype == torch.int64 and x.shape == (4, 16) and y.shape == (4, 16)
    assert x.is_contiguous() and y.is_contiguous()
    # ids are positions: each row is a run of consecutive positions, and y is x shifted by one
    assert torch.equal(x[:, 1:] - x[:, :1], torch.arange(1, 16).expand(4, 15))
    assert torch.equal(y, x + 1)
    other_seed = Batcher(ds, seq_len=16, micro_batch=4, seed=8, mode=mode)
    assert any(not torch.equal(a.batch(s)[0], other_seed.batch(s)[0]) for s in range(3))


def test_sequential_covers_every_window_once_per_epoch(tokens_dir: Path) -> None:
    ds = TokenDataset.open(tokens_dir, "train")
    batcher = Batcher(ds, seq_len=10, micro_batch=4, seed=3, mode="sequential")
    per_epoch = batcher.sequences_per_epoch
    assert per_epoch == 100  # (1001 - 1) // 10 windows; the last needs its target token
    epoch0 = batcher.starts(0, per_epoch)
    epoch1 = batcher.starts(per_epoch, per_epoch)
    expected = list(range(0, 1000, 10))
    assert sorted(epoch0.tolist()) == expected
    assert sorted(epoch1.tolist()) == expected
    assert epoch0.tolist() != epoch1.tolist()  # a fresh order each epoch
    assert epoch0.tolist() != expected  # shuffled, not in file order
    # the same through batches: 25 steps of 4 sequences is one epoch
    seen = [s for step in range(25) for s in batcher.batch(step)[0][:, 0].tolist()]
    assert sorted(seen) == expected


def test_document_mode_starts_at_each_eligible_document_once(tokens_dir: Path) -> None:
    ds = TokenDataset.open(tokens_dir, "train")
    batcher = Batcher(ds, seq_len=50, micro_batch=3, seed=0, mode="document")
    starts = ds.documents.tolist()
    eligible = [s for s in starts if s + 51 <= len(ds)]
    assert batcher.sequences_per_epoch == len(eligible)
    got = batcher.starts(0, len(eligible)).tolist()
    assert sorted(got) == eligible
    x, _ = batcher.batch(5)
    assert set(x[:, 0].tolist()) <= set(eligible)


@pytest.mark.parametrize("mode", ["random", "sequential", "document"])
def test_ranks_get_disjoint_sequences(tokens_dir: Path, mode: str) -> None:
    ds = TokenDataset.open(tokens_dir, "train")
    batcher = Batcher(ds, seq_len=10, micro_batch=2, seed=1, mode=mode)
    world = 4
    taken: list[int] = []
    for step in range(3):
        for rank in range(world):
            x, _ = batcher.batch(step, 0, rank=rank, world_size=world, grad_accum=1)
            taken.extend(x[:, 0].tolist())
    if mode == "sequential":  # 24 windows of the 100 in one epoch: no window twice
        assert len(set(taken)) == len(taken)
    # every rank reads its own slots of the global stream
    stream = batcher.starts(0, len(taken)).tolist()
    assert taken == stream


@pytest.mark.parametrize("mode", ["random", "sequential"])
def test_two_ranks_times_a_equals_one_rank_times_2a(tokens_dir: Path, mode: str) -> None:
    ds = TokenDataset.open(tokens_dir, "train")
    batcher = Batcher(ds, seq_len=8, micro_batch=3, seed=11, mode=mode)
    accum = 3
    for step in range(4):
        two_ranks = {
            (micro * 2 + rank): batcher.batch(step, micro, rank=rank, world_size=2, grad_accum=accum)[0]
            for micro in range(accum)
            for rank in range(2)
        }
        one_rank = [batcher.batch(step, m, rank=0, world_size=1, grad_accum=2 * accum)[0] for m in range(2 * accum)]
        for m in range(2 * accum):
            assert torch.equal(one_rank[m], two_ranks[m])


def test_bad_slot_and_short_split_are_refused(tokens_dir: Path) -> None:
    ds = TokenDataset.open(tokens_dir, "val")
    with pytest.raises(ValueError, match="bad slot"):
        Batcher(ds, 8, 2, 0).batch(0, rank=2, world_size=2)
    with pytest.raises(DataError, match="needs at least 301"):
        Batcher(ds, 300, 1, 0)


def test_validation_batches_are_fixed_and_spread(tokens_dir: Path) -> None:
    ds = TokenDataset.open(tokens_dir, "val")
    first = validation_batches(ds, seq_len=10, batch_size=4, num_batches=5)
    again = validation_batches(TokenDataset.open(tokens_dir, "val"), seq_len=10, batch_size=4, num_batches=5)
    assert len(first) == 5
    for (x1, y1), (x2, y2) in zip(first, again):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
    starts = torch.cat([x[:, 0] for x, _ in first]).tolist()
    assert len(set(starts)) == 20 and all(s % 10 == 0 for s in starts)  # distinct whole windows
    assert max(starts) - min(starts) > 150  # spread over the split, not its first windows


def test_batches_stay_on_the_cpu_or_move_to_the_device(tokens_dir: Path) -> None:
    batcher = Batcher(TokenDataset.open(tokens_dir, "train"), seq_len=16, micro_batch=4, seed=0)
    x, y = batcher.batch(3)
    cpu_x, cpu_y = batcher.batch(3, device="cpu")
    assert cpu_x.device.type == "cpu" and torch.equal(cpu_x, x) and torch.equal(cpu_y, y)
    moved_x, moved_y = batcher.batch(3, device="meta")
    assert moved_x.device.type == "meta" and moved_y.device.type == "meta" and moved_y.shape == y.shape


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_batches_come_from_pinned_memory(tokens_dir: Path) -> None:
    batcher = Batcher(TokenDataset.open(tokens_dir, "train"), seq_len=16, micro_batch=4, seed=0)
    x, y = batcher.batch(3, device="cuda")
    assert x.is_cuda and y.is_cuda
    cpu_x, _ = batcher.batch(3)
    assert torch.equal(x.cpu(), cpu_x)


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 5000), key=st.integers(0, 2**64 - 1))
def test_permute_is_a_bijection(n: int, key: int) -> None:
    out = permute(range(n), n, key)
    assert sorted(out) == list(range(n))
    assert permute(np.arange(n)[::-1], n, key) == out[::-1]  # numpy ints work; entries are independent


def test_permute_refuses_positions_outside_its_range() -> None:
    with pytest.raises(ValueError, match="outside"):
        permute([10], 10, 0)


@pytest.mark.parametrize(("n_tokens", "batch_size", "num_batches", "shape"), [
    (50, 4, 5, (1, 4)),  # 6 windows: one full batch, not 5 batches counting windows 3 and 4 times
    (50, 8, 5, (1, 6)),  # fewer windows than a batch: one batch of all of them
    (301, 4, 5, (5, 4)),  # room for everything asked: unchanged
])  # fmt: skip
def test_validation_batches_never_count_a_window_twice(tmp_path: Path, n_tokens, batch_size, num_batches, shape):
    """A val split smaller than the batches asked for was wrapped into a second shuffled pass:
    some windows counted 3 times, others 4, one twice within a batch."""
    path = write_tokens_dir(tmp_path / "t", {"train": position_docs(100, 10), "val": position_docs(n_tokens, 10)})
    batches = validation_batches(TokenDataset.open(path, "val"), seq_len=8, batch_size=batch_size,
                                 num_batches=num_batches)
    assert (len(batches), batches[0][0].shape[0]) == shape
    starts = [int(row[0]) for x, _ in batches for row in x]  # position ids: a window's first token is its start
    assert len(starts) == len(set(starts))
