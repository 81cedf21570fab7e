"""The benchmark harness's own pieces: the synthetic corpus, the per-child peak memory and the
ratios to CTranslate2."""

import sys

import pytest
import torch

from bench.common import run_child
from bench.workloads import synthetic_corpus


def test_synthetic_corpus_is_parallel_and_deterministic(tmp_path):
    prefix = synthetic_corpus(tmp_path / "a", 300, seed=3)
    src = prefix.with_suffix(".xx").read_text().splitlines()
    tgt = prefix.with_suffix(".yy").read_text().splitlines()
    assert len(src) == len(tgt) == 300
    for s, t in zip(src, tgt, strict=True):
        assert 5 <= len(s.split()) <= 30 and len(s.split()) == len(t.split())
    again = synthetic_corpus(tmp_path / "b", 300, seed=3)
    assert again.with_suffix(".yy").read_text() == prefix.with_suffix(".yy").read_text()
    other = synthetic_corpus(tmp_path / "c", 300, seed=4).with_suffix(".xx").read_text()
    assert other != prefix.with_suffix(".xx").read_text()
    assert set(other.split()) & set(" ".join(src).split())  # one lexicon for every seed


def test_child_peak_memory_is_the_childs_own():
    allocate = "b = bytearray(300 * 2**20); b[::4096] = b'x' * len(b[::4096])"
    exec(allocate)  # a large parent must not lend its own peak to its children
    big = run_child([sys.executable, "-c", allocate])
    small = run_child([sys.executable, "-c", "pass"])
    failing = run_child([sys.executable, "-c", "import sys; print('bye'); sys.exit(3)"])
    assert big.returncode == 0 and small.returncode == 0
    assert big.peak_rss_mib > 300 > 100 > small.peak_rss_mib
    assert failing.returncode == 3 and "bye" in failing.stdout


def test_term_pairs_keep_one_to_one_content_word_links():
    import random

    from bench.terminology import term_pairs, words

    src = words("Ein Mann fährt Fahrrad, der Mann lacht.")
    tgt = words("A man rides a bicycle and laughs.")
    # Ein-A, Mann-man (Mann twice in the source), fährt-rides, Fahrrad-bicycle, lacht-laughs,
    # and "der" linked with both "and" and "a".
    links = {(0, 0), (1, 1), (2, 2), (3, 4), (5, 5), (5, 3), (7, 6)}
    found = term_pairs(src, tgt, links, "de", "en", random.Random(0))
    assert len(found) == 2
    assert set(found) < {("fährt", "rides"), ("Fahrrad", "bicycle"), ("lacht", "laughs")}
    assert term_pairs(src, tgt, {(0, 0), (5, 5)}, "de", "en", random.Random(0)) == []


def test_engine_ratios_name_the_fastest_entries_and_the_same_weights_ones():
    from bench.peers import engine_ratios

    def entry(name, beam5, greedy):
        return {"toolkit": name, "beam5_sent_per_s": beam5, "greedy_sent_per_s": greedy}

    results = [
        entry("nmt", 200.0, 700.0),
        entry("nmt-bf16", 380.0, 1000.0),  # its own weights
        entry("nmt-bf16-decode", 360.0, 900.0),
        entry("opennmt", 100.0, 400.0),  # a peer, not an engine
        entry("ctranslate2", 280.0, 710.0),
        entry("ctranslate2-int8", 375.0, 890.0),
    ]
    ratios = engine_ratios(results)
    assert ratios["beam5_sent_per_s"] == {
        "nmt": "nmt-bf16",
        "engine": "ctranslate2-int8",
        "ratio": 380.0 / 375.0,
    }
    assert ratios["beam5_sent_per_s same weights"]["nmt"] == "nmt-bf16-decode"
    assert ratios["beam5_sent_per_s same weights"]["ratio"] == 360.0 / 375.0
    assert ratios["greedy_sent_per_s same weights"]["ratio"] == 900.0 / 890.0


def test_opennmt_log_gives_tokens_per_second_and_per_update():
    from bench.peer_toolkits import onmt_log_figures

    # Window lines as OpenNMT-py 3.5.1 writes them (trimmed); the first window carries start-up.
    log = "\n".join(
        f"[2026-12-05 11:18:00,086 INFO] Step {step}/100000000; acc: 0.2; ppl: 7650.3; xent: 8.9; "
        f"lr: 0.00004; sents:    2005; bsz: {src}/{tgt}/200; {rs}/{rt} tok/s;     16 sec;"
        for step, src, tgt, rs, rt in [
            (10, 2000, 2100, 1000, 1100),
            (20, 1900, 2000, 2000, 2100),
            (30, 2100, 2200, 2200, 2300),
        ]
    )
    tokens_per_s, tokens_per_update = onmt_log_figures(log)
    assert tokens_per_s == (4100 + 4500) / 2
    assert tokens_per_update == (4100 + 3900 + 4300) / 3
    assert onmt_log_figures("no windows")[1] is None


def test_continuous_search_finds_what_the_batch_search_finds():
    """bench.continuous's search, with sentences joining while others run, finds each sentence's
    n-best list as nmt's batch search does (lever 35 compares their speed)."""
    from dataclasses import replace

    from tiny import random_model

    from bench.continuous import calls_schedule, continuous_schedule, file_schedule
    from nmt.config import DecodeConfig

    model = random_model("transformer", 12, seed=1, sharpen=3.0)
    sources = [[4, 5, 6], [5], [7, 4, 4, 5, 6, 9], [6, 6], [10, 11, 4], [8], [9, 9, 5, 4]]
    cfg = DecodeConfig(beam_size=3, nbest=2, max_len_a=1.5, max_len_b=2, len_penalty=0.6)
    batch = file_schedule(model, replace(cfg, batch_tokens=10_000), sources)
    joined, search = continuous_schedule(model, cfg, sources, clients=3)
    assert max(search.rows_per_step) == 3 and len(search.rows_per_step) > 4
    for found in (joined, calls_schedule(model, cfg, sources, clients=3)):
        assert sorted(found) == list(range(len(sources)))
        for i, nbest in found.items():
            assert [h.tokens for h in nbest] == [h.tokens for h in batch[i]]
            for ours, theirs in zip(nbest, batch[i], strict=True):
                assert abs(ours.score - theirs.score) < 1e-5
                assert ours.token_scores == pytest.approx(theirs.token_scores, abs=1e-5)
                assert ours.attention is not None and theirs.attention is not None
                torch.testing.assert_close(ours.attention, theirs.attention, atol=1e-5, rtol=1e-4)
