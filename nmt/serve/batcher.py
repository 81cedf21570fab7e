"""Dynamic batching: requests that arrive close together are decoded together.

The event loop only queues a request and awaits its future; one worker thread owns the
`Translator`s (they are not thread-safe) and does all the decoding, so the loop never blocks.
Whenever it is free and a request is queued, the worker takes queued requests in arrival order
until their source tokens fill the budget, `max_wait` seconds have passed, or it holds as many
sentences as its last call did (those clients are back; a lone client is not kept waiting for
no one); each request is
planned and encoded once, as it is taken (its ids weigh it against the budget and are what is
decoded). Requests asking for the same model, search settings and glossary then go through one
`Translator.stream_planned` call, which answers each request as soon as the searches of its
sentences have ended. While it decodes, new requests queue up, so under load each call carries
about as many sentences as there are clients.
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
from dataclasses import dataclass
from typing import Any

from nmt.data.glossary import Glossary
from nmt.errors import NmtError
from nmt.inference import SentencePlan, TranslateOptions, Translator
from nmt.serve.metrics import Metrics

# A request's glossary as (source term, target term) pairs, sorted: hashable, so that requests
# with the same one can share a decoding call.
Pairs = tuple[tuple[str, str], ...]


@dataclass
class Job:
    model: str
    lines: list[str]
    options: TranslateOptions
    glossary: Pairs
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[list[dict[str, Any]]]
    cancelled: bool = False  # its client went away: no one waits for the answer
    plan: SentencePlan | None = None  # its sentences, encoded when the worker takes the job


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
        # Sentences of the last call: once as many are taken again, its clients are back and
        # waiting longer gathers no one (0 before the first call: wait).
        self._last_call = 0
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

    def submit(
        self, model: str, lines: list[str], options: TranslateOptions, glossary: Pairs = ()
    ) -> Job:
        """Queue `lines`; the job's future gets their results (`TranslationResult.to_dict()`
        each). Raises QueueFull or DecoderStopped. Call from the event loop."""
        loop = asyncio.get_running_loop()
        job = Job(model, lines, options, glossary, loop, loop.create_future())
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
        self, model: str, lines: list[str], options: TranslateOptions, glossary: Pairs = ()
    ) -> list[dict[str, Any]]:
        """Queue `lines` and wait for their results; cancelled, the job leaves the queue."""
        job = self.submit(model, lines, options, glossary)
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
            self._last_call = sum(len(job.lines) for job in jobs)
            groups: dict[tuple[str, TranslateOptions, Pairs], list[Job]] = {}
            for job in jobs:
                # Attention is left out of the key: a shared call computes it if anyone asked.
                options = dataclasses.replace(job.options, attention=False)
                groups.setdefault((job.model, options, job.glossary), []).append(job)
            for (model, options, glossary), group in groups.items():
                self._decode(self.translators[model], model, options, glossary, group)

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
            back = 0 < self._last_call <= sum(len(job.lines) for job in jobs)
            if left <= 0 or self._stopping or back:
                return self._taken(jobs)
            self._wake.wait(left)

    def _taken(self, jobs: list[Job]) -> list[Job]:
        self._queued -= sum(len(job.lines) for job in jobs)
        return jobs

    def _admit(self, job: Job) -> int | None:
        """Plan and encode the job's sentences (once: this plan is decoded) and return its cost
        in the budget's unit, source subwords plus one EOS per sentence; or None when its model
        refuses one of its lines (longer than the model takes, under decode.too_long=error).
        Such a job is answered with that error now, naming its own line, so that it cannot fail
        the call it would have shared with other clients' requests."""
        translator = self.translators[job.model]
        split = translator.cfg.split if job.options.split is None else job.options.split
        try:
            job.plan = translator.plan(job.lines, split, 0, "request")
            return sum(len(ids) + 1 for ids in job.plan.src_ids)
        except NmtError as exc:
            _resolve(job, None, exc)
            return None

    def _decode(
        self,
        translator: Translator,
        model: str,
        options: TranslateOptions,
        glossary: Pairs,
        jobs: list[Job],
    ) -> None:
        """One call serves every request of the group, and each request is answered as soon as
        the searches of all its sentences have ended, while the others go on. The attention is
        always computed, so that every answer carries its hard alignment; the matrices go only
        to the requests that asked for them."""
        lines = [line for job in jobs for line in job.lines]
        owners = [(j, k) for j, job in enumerate(jobs) for k in range(len(job.lines))]
        answers: list[list[dict[str, Any]]] = [[{} for _ in job.lines] for job in jobs]
        pending = [len(job.lines) for job in jobs]
        for job, left in zip(jobs, pending, strict=True):
            if not left:
                _resolve(job, [], None)
        if self.metrics is not None:  # counted first: a client answered early already sees it
            self.metrics.batch_started(model, len(lines))
        plan = SentencePlan.joined([job.plan for job in jobs if job.plan is not None])
        terms = Glossary.from_pairs(glossary, "glossary") if glossary else None  # else the model's
        nbest = (options.nbest or 1) > 1
        try:
            results = translator.stream_planned(
                lines, plan, dataclasses.replace(options, attention=True), terms
            )
            for n, result in results:
                j, k = owners[n]
                answers[j][k] = result.to_dict(nbest=nbest, attention=jobs[j].options.attention)
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
