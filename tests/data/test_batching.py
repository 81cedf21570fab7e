"""nmt.data.batching: the token-budget sampler's guarantees and the exact tensors of `collate`."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nmt.config import BOS_ID, EOS_ID, PAD_ID
from nmt.data.batching import Batch, TokenBatchSampler, collate, make_src_batch, pack_bounds

RNG = np.random.default_rng(0)
SRC = RNG.integers(1, 40, size=1000).tolist()
TGT = (np.array(SRC) + RNG.integers(-5, 6, size=1000)).clip(1).tolist()


def padded_size(batch: list[int]) -> int:
    return len(batch) * (max(SRC[i] for i in batch) + 1 + max(TGT[i] for i in batch) + 1)


@pytest.mark.parametrize("shuffle", [True, False])
def test_every_sentence_once_and_budget_respected(shuffle: bool) -> None:
    sampler = TokenBatchSampler(SRC, TGT, batch_tokens=300, shuffle=shuffle, seed=3)
    for epoch in range(3):
        batches = sampler.batches(epoch)
        flat = [i for batch in batches for i in batch]
        assert sorted(flat) == list(range(len(SRC)))
        assert all(padded_size(b) <= 300 for b in batches)
        assert len(batches) == len(sampler)


def test_sentence_over_budget_gets_its_own_batch() -> None:
    src, tgt = [5, 200, 6, 7], [5, 190, 6, 7]
    batches = TokenBatchSampler(src, tgt, batch_tokens=64, shuffle=False).batches(0)
    assert [1] in batches
    assert sorted(i for b in batches for i in b) == [0, 1, 2, 3]
    assert all(
        len(b) * (max(src[i] for i in b) + max(tgt[i] for i in b) + 2) <= 64
        for b in batches
        if b != [1]
    )


def test_packing_is_tight_on_equal_lengths() -> None:
    # 10 sentences of 4 + 4 tokens (5 + 5 with EOS/BOS): 30 tokens fit 3 sentences per batch.
    batches = TokenBatchSampler([4] * 10, [4] * 10, batch_tokens=30, shuffle=False).batches(0)
    assert [len(b) for b in batches] == [3, 3, 3, 1]
    assert batches[0] == [0, 1, 2]


def test_shuffle_depends_on_seed_and_epoch_only() -> None:
    a = TokenBatchSampler(SRC, TGT, 300, seed=1)
    b = TokenBatchSampler(SRC, TGT, 300, seed=1)
    assert a.batches(0) == b.batches(0)
    assert a.batches(1) == b.batches(1)
    assert a.batches(0) != a.batches(1)
    assert TokenBatchSampler(SRC, TGT, 300, seed=2).batches(0) != a.batches(0)
    unshuffled = TokenBatchSampler(SRC, TGT, 300, shuffle=False)
    assert unshuffled.batches(0) == unshuffled.batches(5)
    a.set_epoch(1)
    assert list(a) == a.batches(1)


@pytest.mark.parametrize("world_size", [2, 5, 11])  # 168 batches on one rank: 5, 11 split some
def test_ranks_get_disjoint_equal_shares_of_one_global_list(world_size: int) -> None:
    samplers = [
        TokenBatchSampler(SRC, TGT, 300, seed=4, rank=r, world_size=world_size)
        for r in range(world_size)
    ]
    for epoch in (0, 1):
        shares = [s.batches(epoch) for s in samplers]
        assert len({len(share) for share in shares}) == 1
        assert all(len(share) == len(s) for share, s in zip(shares, samplers, strict=True))
        global_list = samplers[0].global_batches(epoch)
        single = TokenBatchSampler(SRC, TGT, 300, seed=4).batches(epoch)
        assert len(global_list) == len(single) + (-len(single) % world_size)
        assert all(s.global_batches(epoch) == global_list for s in samplers[1:])
        # Interleaved, the shares give back the global list; splitting the tail kept every sentence.
        interleaved = [shares[i % world_size][i // world_size] for i in range(len(global_list))]
        assert interleaved == global_list
        flat = [i for share in shares for batch in share for i in batch]
        assert sorted(flat) == list(range(len(SRC)))
        assert all(padded_size(b) <= 300 for share in shares for b in share)


def test_tail_dropped_only_when_batches_cannot_be_split() -> None:
    # Three sentences, each over budget alone: three single-sentence batches, two ranks.
    shares = [
        TokenBatchSampler([50] * 3, [50] * 3, 10, rank=r, world_size=2).batches(0) for r in (0, 1)
    ]
    assert len(shares[0]) == len(shares[1]) == 1
    assert not set(shares[0][0]) & set(shares[1][0])


def test_padding_fraction_matches_its_definition() -> None:
    sampler = TokenBatchSampler(SRC, TGT, 300, seed=0)
    batches = sampler.batches(0)
    real = sum(SRC[i] + TGT[i] + 2 for b in batches for i in b)
    assert sampler.padding_fraction(0) == pytest.approx(1 - real / sum(map(padded_size, batches)))
    assert TokenBatchSampler([4] * 9, [4] * 9, 30).padding_fraction(0) == 0.0


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        TokenBatchSampler([1, 2], [1], 100)
    with pytest.raises(ValueError):
        TokenBatchSampler([1], [1], 100, rank=2, world_size=2)


def test_collate_builds_the_documented_tensors() -> None:
    batch = collate([[10, 11, 12], [20]], [[30], [40, 41]], indices=[7, 3])
    assert batch.src_ids.tolist() == [[10, 11, 12, EOS_ID], [20, EOS_ID, PAD_ID, PAD_ID]]
    assert batch.src_mask.tolist() == [[True] * 4, [True, True, False, False]]
    assert batch.tgt_in_ids.tolist() == [[BOS_ID, 30, PAD_ID], [BOS_ID, 40, 41]]
    assert batch.tgt_out_ids.tolist() == [[30, EOS_ID, PAD_ID], [40, 41, EOS_ID]]
    assert batch.tgt_mask.tolist() == [[True, True, False], [True, True, True]]
    assert batch.src_ids.dtype == torch.int64 and batch.src_mask.dtype == torch.bool
    assert (batch.num_src_tokens, batch.num_tgt_tokens, batch.indices) == (6, 5, [7, 3])
    src_ids, src_mask = make_src_batch([[10, 11, 12], [20]])
    assert torch.equal(src_ids, batch.src_ids) and torch.equal(src_mask, batch.src_mask)


def test_empty_sentences_and_moving() -> None:
    batch = collate([[]], [[]], [0])
    assert batch.src_ids.tolist() == [[EOS_ID]] and batch.tgt_in_ids.tolist() == [[BOS_ID]]
    moved = batch.to("cpu")
    assert isinstance(moved, Batch) and torch.equal(moved.tgt_out_ids, batch.tgt_out_ids)
    if torch.cuda.is_available():
        assert batch.pin_memory().src_ids.is_pinned()


def reference_global_batches(
    src: list[int], tgt: list[int], budget: int, shuffle: bool, seed: int, epoch: int, world: int
) -> list[list[int]]:
    """The sampler's rules written plainly, one sentence at a time (the list-based sampler that
    the array version replaced): sort, pack greedily, shuffle the batches, split the largest ones
    until every rank gets as many."""
    rng = np.random.default_rng([seed, epoch])
    src_a, tgt_a = np.asarray(src), np.asarray(tgt)
    if shuffle:
        order = np.lexsort((rng.random(len(src)), tgt_a, src_a))
    else:
        order = np.lexsort((tgt_a, src_a))
    batches: list[list[int]] = []
    current: list[int] = []
    max_src = max_tgt = 0
    for i in order.tolist():
        s, t = max(max_src, src[i] + 1), max(max_tgt, tgt[i] + 1)
        if current and (len(current) + 1) * (s + t) > budget:
            batches.append(current)
            current, max_src, max_tgt = [i], src[i] + 1, tgt[i] + 1
        else:
            current.append(i)
            max_src, max_tgt = s, t
    if current:
        batches.append(current)
    if shuffle:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    short = -len(batches) % world
    splittable = [i for i, b in enumerate(batches) if len(b) > 1]
    if short and len(splittable) < short:
        return batches[: len(batches) - len(batches) % world]
    chosen = set(sorted(splittable, key=lambda i: (-len(batches[i]), i))[:short])
    out: list[list[int]] = []
    for i, batch in enumerate(batches):
        out += [batch[: len(batch) // 2], batch[len(batch) // 2 :]] if i in chosen else [batch]
    return out


def test_array_sampler_equals_the_plain_rules() -> None:
    rng = np.random.default_rng(11)
    for _ in range(60):
        n, longest = int(rng.integers(1, 300)), int(rng.integers(1, 90))
        src = rng.integers(0, longest, size=n).tolist()
        tgt = rng.integers(0, longest, size=n).tolist()
        budget, world = int(rng.integers(1, 700)), int(rng.integers(1, 6))
        shuffle, seed = bool(rng.integers(0, 2)), int(rng.integers(0, 9))
        for epoch in (0, 1):
            expected = reference_global_batches(src, tgt, budget, shuffle, seed, epoch, world)
            sampler = TokenBatchSampler(src, tgt, budget, shuffle, seed, world_size=world)
            assert sampler.global_batches(epoch) == expected
            assert len(sampler) == len(expected) // world


def test_packing_windows_grow_for_long_batches() -> None:
    # 3,000 one-token sentences in a 100,000-token budget: one batch, found window by window.
    bounds = pack_bounds(np.full(3000, 1), np.full(3000, 1), 100_000)
    assert bounds.tolist() == [0, 3000]
    assert pack_bounds(np.zeros(0, np.int64), np.zeros(0, np.int64), 10).tolist() == [0]
