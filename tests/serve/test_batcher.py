"""The batcher on its own: queued requests decoded together up to the token budget, grouped by
their search settings, each answered with exactly what a direct `translate_full` call gives."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nmt.errors import DataError
from nmt.inference import TranslateOptions, Translator
from nmt.serve.batcher import Batcher, QueueFull
from nmt.serve.metrics import Metrics

LINES = ["ba ce do", "fo ge", "ha ke lo ba", "ce", "do fe ga", "lo ba ke"]
PLAIN = TranslateOptions(beam_size=3, nbest=1)
WITH_ATTENTION = TranslateOptions(attention=True)


@pytest.fixture(scope="module")
def translator(served_runs: list[Path]) -> Iterator[Translator]:
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield Translator.load(served_runs[0], device="cpu")
    torch.set_num_threads(threads)


def run_batcher(
    translator: Translator,
    max_tokens: int,
    jobs: list[tuple[list[str], TranslateOptions]],
    answered: list[int] | None = None,
):
    """Queue all jobs at once (before the worker starts), run them; (results, batches, metrics).
    `answered` receives the job numbers in the order their answers came."""
    batcher = Batcher({"m": translator}, max_tokens, max_wait=0.5, max_queue=100)
    metrics = Metrics(lambda: batcher.queued_sentences, lambda: 0)
    batcher.metrics = metrics

    async def main() -> list:
        pending = [asyncio.ensure_future(batcher.translate("m", lines, o)) for lines, o in jobs]
        for number, future in enumerate(pending):
            if answered is not None:
                future.add_done_callback(lambda _, number=number: answered.append(number))
        await asyncio.sleep(0)  # every job is queued before decoding starts
        batcher.start()
        try:
            return await asyncio.wait_for(asyncio.gather(*pending), 120)
        finally:
            batcher.stop()

    results = asyncio.run(main())
    return results, metrics.batches.get("m", 0), metrics


def test_requests_share_one_call_and_get_their_own_answers(translator: Translator) -> None:
    results, batches, metrics = run_batcher(translator, 10_000, [([line], PLAIN) for line in LINES])
    assert batches == 1 and metrics.batch_sentences.counts[3] == 1  # one call of 5-8 sentences
    direct = translator.translate_full(LINES, WITH_ATTENTION)
    assert [r[0] for r in results] == [d.to_dict() for d in direct]


def test_a_short_request_is_answered_before_the_long_one_beside_it_ends(
    translator: Translator,
) -> None:
    lines = ["ha ke lo ba do fe ga lo ba ke ce do fo ge", "ce", "fo ge"]
    ends = [n for n, _ in translator.translate_stream(lines)]
    assert ends[0] != 0  # a short line's search ends first
    answered: list[int] = []
    results, batches, _ = run_batcher(
        translator, 10_000, [([line], PLAIN) for line in lines], answered
    )
    assert batches == 1 and answered == ends  # one call, answered as each search ended
    direct = translator.translate_full(lines, WITH_ATTENTION)
    assert [r[0] for r in results] == [d.to_dict() for d in direct]


def test_the_token_budget_splits_the_queue(translator: Translator) -> None:
    tokens = [len(ids) + 1 for ids in translator.encode(LINES, 0, "request")]
    budget = max(tokens[0] + tokens[1], max(tokens))  # the first two requests fit, not three
    assert tokens[0] + tokens[1] + tokens[2] > budget
    results, batches, _ = run_batcher(translator, budget, [([line], PLAIN) for line in LINES])
    assert 3 <= batches < len(LINES)
    assert [r[0]["translation"] for r in results] == translator.translate(LINES)


def test_the_wait_ends_once_the_last_calls_sentences_are_back(translator: Translator) -> None:
    """The worker waits up to max_wait for more requests, but once it holds as many sentences
    as its last call did, those clients are back: a lone client's next request is decoded at
    once instead of after max_wait."""
    batcher = Batcher({"m": translator}, 10_000, max_wait=3.0, max_queue=100)

    async def answer_time(line: str) -> float:
        start = time.monotonic()
        await batcher.translate("m", [line], PLAIN)
        return time.monotonic() - start

    async def main() -> tuple[float, float]:
        batcher.start()
        try:
            return await answer_time(LINES[0]), await answer_time(LINES[1])
        finally:
            batcher.stop()

    first, second = asyncio.run(main())
    assert first >= 3.0 > 1.5 > second  # the first call has no last call: it waits


def test_different_settings_are_decoded_apart(translator: Translator) -> None:
    wide = TranslateOptions(beam_size=4, nbest=2, attention=True)
    jobs = [(["ba ce do"], PLAIN), (["ba ce do"], wide), (["fo ge"], PLAIN)]
    results, batches, _ = run_batcher(translator, 10_000, jobs)
    assert batches == 2
    assert "attention" not in results[0][0] and "nbest" not in results[0][0]
    assert len(results[1][0]["nbest"]) == 2 and "matrix" in results[1][0]["attention"]
    want = translator.translate_full(["ba ce do"], wide)[0]
    assert results[1][0] == want.to_dict(nbest=True, attention=True)


def test_a_full_queue_refuses_more(translator: Translator) -> None:
    batcher = Batcher({"m": translator}, 10_000, max_wait=0.0, max_queue=3)

    async def main() -> None:
        first = asyncio.ensure_future(batcher.translate("m", ["ce", "ce"], PLAIN))
        await asyncio.sleep(0)
        with pytest.raises(QueueFull, match="2 sentences are already waiting"):
            await batcher.translate("m", ["ce", "ce"], PLAIN)
        batcher.start()
        await asyncio.wait_for(first, 60)
        batcher.stop()

    asyncio.run(main())


def test_a_fault_part_way_fails_only_the_requests_still_waiting(
    translator: Translator, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = Translator.stream_planned

    def fails_after_one(*args: Any) -> Iterator[tuple[int, Any]]:
        stream = real(*args)
        yield next(stream)
        raise RuntimeError("the model went away")

    monkeypatch.setattr(Translator, "stream_planned", fails_after_one)
    batcher = Batcher({"m": translator}, 10_000, max_wait=0.5, max_queue=100)

    async def main() -> list:
        pending = [batcher.translate("m", [line], PLAIN) for line in ("ce", "fo ge")]
        futures = [asyncio.ensure_future(p) for p in pending]
        await asyncio.sleep(0)
        batcher.start()
        try:
            return await asyncio.wait_for(asyncio.gather(*futures, return_exceptions=True), 60)
        finally:
            batcher.stop()

    answered, failed = sorted(asyncio.run(main()), key=lambda r: isinstance(r, Exception))
    assert answered[0]["translation"] in translator.translate(["ce", "fo ge"])
    assert isinstance(failed, RuntimeError) and "went away" in str(failed)


def test_a_line_the_model_refuses_fails_only_its_own_request(served_runs: list[Path]) -> None:
    strict = Translator.load(served_runs[0], device="cpu", too_long="error", beam_size=3)
    assert strict.max_src_len is not None
    too_long = " ".join(["ba ce do fo"] * strict.max_src_len)
    jobs = [([LINES[0]], PLAIN), ([LINES[1], too_long], PLAIN), ([LINES[2]], PLAIN)]
    batcher = Batcher({"m": strict}, 10_000, max_wait=0.5, max_queue=100)

    async def main() -> list:
        pending = [asyncio.ensure_future(batcher.translate("m", lines, o)) for lines, o in jobs]
        await asyncio.sleep(0)  # all three queued before the worker takes any
        batcher.start()
        try:
            return await asyncio.wait_for(asyncio.gather(*pending, return_exceptions=True), 120)
        finally:
            batcher.stop()

    first, refused, third = asyncio.run(main())
    assert isinstance(refused, DataError)
    assert str(refused).startswith("request:2: ")  # its own second line
    direct = strict.translate_full([LINES[0], LINES[2]], WITH_ATTENTION)
    assert [first[0], third[0]] == [d.to_dict() for d in direct]
    assert batcher.queued_sentences == 0
