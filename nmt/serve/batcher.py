"""Dynamic batching: requests that arrive close together are decoded together.

The event loop only queues a request and awaits its future; one worker thread owns the
`Translator`s (they are not thread-safe) and does all the decoding, so the loop never blocks.
Whenever it is free and a request is queued, the worker takes queued requests in arrival order
until their source tokens fill the budget or `max_wait` seconds have passed; requests asking for
the same model and search settings then go through one `Translator.translate_stream` call, which
answers each request as soon as the searches of its sentences have ended. While it decodes, new
requests queue up, so under load each call carries about as many sentences as there are clients.
The wait starts when the worker is free, not when the oldest request came: otherwise, with
clients that send again as soon as they are answered, one request left over from a busy spell is
decoded alone while the others are still on their way, and the batches keep alternating between
a few sentences and the rest.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from nmt.data.glossary import Glossary
from nmt.errors import NmtError
from nmt.inference import block_diagonal
from nmt.serve.metrics import Metrics

if TYPE_CHECKING:
    from nmt.inference import Translator


@dataclass(frozen=True)
class Options:
    """Search settings of one request; requests with equal options can share a decoding call."""

    beam: int
    nbest: int
    attention: bool
    attention_detail: bool  # every layer and head of a Transformer, for the page's selectors
    glossary: tuple[tuple[str, str], ...] = ()  # (source term, target term) pairs, sorted
    split: bool = True  # each line translated sentence by sentence (nmt/data/sentences.py)


@dataclass
class Job:
    model: str
    lines: list[str]
    options: Options
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[list[dict[str, Any]]]
    cancelled: bool = False  # its client went away: no one waits for the answer


class QueueFull(Exception):
    """More sentences are waiting than the server accepts (answered with 503)."""


class DecoderStopped(Exception):
    """The decoding thread has ended (answered with 503; /health says so)."""


class Batcher:
    """Queue of translation jobs and the one thread that decodes them."""

    def __init__(
        self,
        translators: dict[str, Translator],
        max_tokens: int,
        max_wait: float,
        max_queue: int,
        metrics: Metrics | None = None,
    ) -> None:
        self.translators = translators
        self.max_tokens = max_tokens
        self.max_wait = max_wait
        self.max_queue = max_queue
        self.metrics = metrics
        self._jobs: collections.deque[Job] = collections.deque()
        self._queued = 0  # sentences in _jobs
        self._wake = threading.Condition()
        self._stopping = False
        self.failure: BaseException | None = None  # why the worker thread died, if it did
        self._thread = threading.Thread(target=self._run, name="nmt-decoder", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Finish what is queued, then end the worker thread; with `timeout`, drop what is still
        queued and wait at most that long for the batch being decoded. The thread may then still
        be inside torch (`is_decoding`), and the interpreter must not shut down under it: see
        server.serve."""
        with self._wake:
            self._stopping = True
            if timeout is not None:
                for job in self._jobs:
                    job.cancelled = True
                self._jobs.clear()
                self._queued = 0
            self._wake.notify()
        self._thread.join(timeout)

    @property
    def is_decoding(self) -> bool:
        """Whether the worker thread is still alive (after `stop`: inside a batch)."""
        return self._thread.is_alive()

    @property
    def state(self) -> str:
        """ "running", or why the decoder stopped (what /health reports)."""
        if self.failure is not None:
            return f"stopped ({type(self.failure).__name__}: {self.failure})"
        if not self._thread.is_alive():
            return "stopped" if self._stopping else "not started"
        return "running"

    @property
    def queued_sentences(self) -> int:
        return self._queued

    def submit(self, model: str, lines: list[str], options: Options) -> Job:
        """Queue `lines`; the job's future gets their results (`TranslationResult.to_dict()`
        each). Raises QueueFull or DecoderStopped. Call from the event loop."""
        loop = asyncio.get_running_loop()
        job = Job(model, lines, options, loop, loop.create_future())
        with self._wake:
            if self.failure is not None or self._stopping:
                raise DecoderStopped(self.state)
            if self._queued + len(lines) > self.max_queue and self._jobs:
                raise QueueFull(f"{self._queued} sentences are already waiting; try again later")
            self._jobs.append(job)
            self._queued += len(lines)
            self._wake.notify()
        return job

    def cancel(self, job: Job) -> None:
        """Forget a job whose client went away: taken out of the queue, or, while its batch is
        being decoded, left unanswered (a batch whose clients have all gone stops early)."""
        with self._wake:
            job.cancelled = True
            if job in self._jobs:
                self._jobs.remove(job)
                self._queued -= len(job.lines)
        job.future.cancel()

    async def translate(
        self, model: str, lines: list[str], options: Options
    ) -> list[dict[str, Any]]:
        """Queue `lines` and wait for their results; cancelled, the job leaves the queue."""
        job = self.submit(model, lines, options)
        try:
            return await job.future
        finally:
            if not job.future.done() or job.future.cancelled():
                self.cancel(job)

    # ---- the worker thread ------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._serve()
        except BaseException as exc:  # a bug of ours: every waiting request is told, not left
            self.failure = exc
            with self._wake:
                jobs, self._queued = list(self._jobs), 0
                self._jobs.clear()
            for job in jobs:
                _resolve(job, None, DecoderStopped(self.state))
            raise

    def _serve(self) -> None:
        while True:
            jobs = self._collect()
            if not jobs:
                return
            jobs = [job for job in jobs if not job.cancelled]  # left while the batch gathered
            groups: dict[tuple[str, Options], list[Job]] = {}
            for job in jobs:
                # Attention is left out of the key: a shared call computes it if anyone asked.
                key = (job.model, dataclasses.replace(job.options, attention=False))
                groups.setdefault(key, []).append(job)
            for (model, options), group in groups.items():
                self._decode(self.translators[model], model, options, group)

    def _collect(self) -> list[Job]:
        """Block until there is work; then take jobs up to the token budget or the wait limit.
        An empty list means: stopping and nothing left."""
        with self._wake:
            while True:
                while not self._jobs:
                    if self._stopping:
                        return []
                    self._wake.wait()
                jobs = self._fill()
                if jobs:  # else every job was refused on its own: wait for the next
                    return jobs

    def _fill(self) -> list[Job]:
        """Queued jobs in arrival order up to the token budget or the wait limit (the caller
        holds the lock); refused jobs are answered and skipped."""
        jobs: list[Job] = []
        tokens = 0
        deadline = time.monotonic() + self.max_wait
        while True:
            while self._jobs:
                if self._jobs[0].cancelled:
                    self._taken([self._jobs.popleft()])
                    continue
                cost = self._admit(self._jobs[0])
                if cost is None:
                    self._taken([self._jobs.popleft()])
                    continue
                if jobs and tokens + cost > self.max_tokens:
                    return self._taken(jobs)
                jobs.append(self._jobs.popleft())
                tokens += cost
            left = deadline - time.monotonic()
            if left <= 0 or self._stopping:
                return self._taken(jobs)
            self._wake.wait(left)

    def _taken(self, jobs: list[Job]) -> list[Job]:
        self._queued -= sum(len(job.lines) for job in jobs)
        return jobs

    def _admit(self, job: Job) -> int | None:
        """The job's cost in the budget's unit, source subwords plus one EOS per sentence; or
        None when its model refuses one of its lines (longer than the model takes, under
        decode.too_long=error). Such a job is answered with that error now, naming its own line,
        so that it cannot fail the call it would have shared with other clients' requests."""
        translator = self.translators[job.model]
        try:
            plan = translator.plan(job.lines, job.options.split, 0, "request")
            return sum(len(ids) + 1 for ids in plan.src_ids)
        except NmtError as exc:
            _resolve(job, None, exc)
            return None

    def _decode(
        self, translator: Translator, model: str, options: Options, jobs: list[Job]
    ) -> None:
        """One call serves every request of the group, and each request is answered as soon as
        the searches of all its sentences have ended, while the others go on. The attention
        matrices are dropped again for requests that did not ask for them."""
        lines = [line for job in jobs for line in job.lines]
        owners = [(j, k) for j, job in enumerate(jobs) for k in range(len(job.lines))]
        answers: list[list[dict[str, Any]]] = [[{} for _ in job.lines] for job in jobs]
        pending = [len(job.lines) for job in jobs]
        for job, left in zip(jobs, pending, strict=True):
            if not left:
                _resolve(job, [], None)
        wants = any(job.options.attention for job in jobs)
        if self.metrics is not None:  # counted first: a client answered early already sees it
            self.metrics.batch_started(model, len(lines))
        try:
            for n, row in decode_stream(
                translator, lines, dataclasses.replace(options, attention=wants)
            ):
                j, k = owners[n]
                if not jobs[j].options.attention:
                    row.pop("attention", None)
                answers[j][k] = row
                pending[j] -= 1
                if not pending[j]:
                    _resolve(jobs[j], answers[j], None)
                if all(job.cancelled for job, left in zip(jobs, pending, strict=True) if left):
                    return  # no one waits for the rest (or stopping): the search ends here
        except Exception as exc:  # handed to each request still waiting, which answers for it
            for job, left in zip(jobs, pending, strict=True):
                if left:
                    _resolve(job, None, exc)
            return


def _resolve(job: Job, result: list[dict[str, Any]] | None, error: BaseException | None) -> None:
    def settle() -> None:
        if job.future.done():  # the client went away and the request was cancelled
            return
        if error is not None:
            job.future.set_exception(error)
        else:
            job.future.set_result(result or [])

    job.loop.call_soon_threadsafe(settle)


def request_glossary(options: Options) -> Glossary | None:
    """The request's glossary (None without one, so that the model's own applies)."""
    return Glossary.from_pairs(options.glossary, "glossary") if options.glossary else None


def decode_stream(
    translator: Translator, lines: list[str], options: Options
) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line index, JSON-ready result) pairs for one group of requests, as each sentence's search
    ends (`Translator.translate_stream`). The attention is always computed, so that every answer
    carries its hard alignment; the matrices are included when `options.attention` asks for
    them."""
    if options.attention_detail and translator.arch == "transformer":
        yield from _decode_detail(translator, lines, options)
        return
    results = translator.translate_stream(
        lines,
        beam_size=options.beam,
        nbest=options.nbest,
        attention=True,
        glossary=request_glossary(options),
        split=options.split,
    )
    for n, result in results:
        yield n, result.to_dict(nbest=options.nbest > 1, attention=options.attention)


def _decode_detail(
    translator: Translator, lines: list[str], options: Options
) -> Iterator[tuple[int, dict[str, Any]]]:
    """As `decode_stream`, plus every decoder layer and head of each sentence's word attention
    under sentences[k].attention.layers, shaped (layers, heads, target words, source words), and
    the run's own choice under attention.layer / attention.head. The matrices and the hard
    alignments stay those of the run's decode.attention_layer / attention_head (the alignment of
    a run trained with guided alignment: its supervised head): word merging is linear, so
    reducing the per-head word matrices gives the same numbers. The line's own attention is the
    sentences' reduced matrices, block diagonal."""
    from nmt.decoding.alignment import format_pharaoh

    results = translator.translate_stream(
        lines,
        beam_size=options.beam,
        nbest=options.nbest,
        attention=True,
        attention_layer="all",
        attention_head="all",
        glossary=request_glossary(options),
        split=options.split,
    )
    for n, result in results:
        row = result.to_dict(nbest=options.nbest > 1, attention=True)
        links: list[tuple[int, int]] = []
        blocks = []
        src_offset = tgt_offset = 0
        for sentence, sentence_row in zip(result.sentences, row["sentences"], strict=True):
            words, sentence_links = _reduced(translator, sentence, sentence_row)
            blocks.append(words)
            links += [(i + src_offset, j + tgt_offset) for i, j in sentence_links]
            src_offset += words.shape[1]
            tgt_offset += words.shape[0]
        if blocks and all(b.size for b in blocks):
            row["alignment"] = format_pharaoh(links)
            row["attention"]["matrix"] = _rounded(block_diagonal(blocks))
            if len(blocks) == 1:
                row["attention"]["layers"] = row["sentences"][0]["attention"]["layers"]
        yield n, row


def _reduced(
    translator: Translator, sentence: Any, row: dict[str, Any]
) -> tuple[Any, list[tuple[int, int]]]:
    """A sentence's word attention reduced as the run says, its hard links, and its row's
    attention and alignment rewritten with them (the layers kept beside)."""
    import numpy as np

    from nmt.decoding.alignment import format_pharaoh, hard_alignment, reduce_attention

    cfg = translator.cfg
    layers = sentence.attention  # (L, H, Tw, Sw), or (0, 0) for an empty line
    if layers is None or layers.ndim != 4:
        return np.zeros((0, 0), np.float32), list(sentence.alignment)
    words = reduce_attention(layers.transpose(2, 0, 1, 3), cfg.attention_layer,
                             cfg.attention_head)  # fmt: skip
    links = list(sentence.alignment)
    if translator.aligned_head is None:  # else the links come from that head already
        links = hard_alignment(words, cfg.align_threshold)
    row["alignment"] = format_pharaoh(links)
    row["attention"].update(
        matrix=_rounded(words),
        layers=_rounded(layers),
        layer=cfg.attention_layer,
        head=cfg.attention_head,
    )
    return words, links


def _rounded(matrix: Any) -> Any:
    import numpy as np

    return np.round(matrix.astype(np.float64), 4).tolist()
