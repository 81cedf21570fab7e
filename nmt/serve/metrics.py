"""Counters, gauges and histograms of the server, written in the Prometheus text format (0.0.4).

A few dozen lines instead of a client library: the server needs counters with labels and
histograms with fixed buckets, updated from the event loop and the decoding thread alike.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Callable
from typing import Any

# Seconds from a request's arrival to its response.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# Sentences per decoding call.
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class Histogram:
    """Cumulative-bucket histogram: `le` upper bounds, plus the sum and count of observations."""

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last slot is +Inf
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value

    def lines(self, name: str) -> list[str]:
        out, running = [], 0
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += count
            le = "+Inf" if bound == float("inf") else f"{bound:g}"
            out.append(f'{name}_bucket{{le="{le}"}} {running}')
        out.append(f"{name}_sum {self.total:.6f}")
        out.append(f"{name}_count {running}")
        return out


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _counter(
    name: str, help_text: str, labels: tuple[str, ...], counts: dict[Any, int]
) -> list[str]:
    """A counter's HELP and TYPE lines and one sample per key of `counts` (a label value, or a
    tuple of them in the order of `labels`), sorted."""
    out = [f"# HELP {name} {help_text}", f"# TYPE {name} counter"]
    for key, n in sorted(counts.items()):
        values = key if isinstance(key, tuple) else (key,)
        pairs = ",".join(
            f'{label}="{_escape(str(v))}"' for label, v in zip(labels, values, strict=True)
        )
        out.append(f"{name}{{{pairs}}} {n}")
    return out


class Metrics:
    """Everything /metrics reports. Safe to update from several threads."""

    def __init__(self, queue_length: Callable[[], int], in_flight: Callable[[], int]) -> None:
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, int], int] = {}  # (path, status) -> count
        self.sentences: dict[str, int] = {}  # model -> sentences translated
        self.batches: dict[str, int] = {}  # model -> decoding calls
        self.batch_sentences = Histogram(BATCH_BUCKETS)
        self.latency = Histogram(LATENCY_BUCKETS)
        self.gone: dict[tuple[str, str], int] = {}  # (path, stage) -> clients that left
        self.refused: dict[str, int] = {}  # reason -> connections closed unanswered
        self._queue_length = queue_length
        self._in_flight = in_flight

    def request_done(self, path: str, status: int, seconds: float) -> None:
        with self._lock:
            self.requests[(path, status)] = self.requests.get((path, status), 0) + 1
            if path == "/translate":
                self.latency.observe(seconds)

    def client_gone(self, path: str, stage: str) -> None:
        """A client closed its connection before its answer: while `stage` "sending" its
        request or "waiting" for the translation. Counted apart from the answered requests."""
        with self._lock:
            self.gone[(path, stage)] = self.gone.get((path, stage), 0) + 1

    def connection_refused(self, reason: str) -> None:
        """A connection closed by the server without a request being answered: "limit" (too
        many open connections) or "header_timeout" (the request line and headers came too
        slowly)."""
        with self._lock:
            self.refused[reason] = self.refused.get(reason, 0) + 1

    def batch_started(self, model: str, sentences: int) -> None:
        with self._lock:
            self.sentences[model] = self.sentences.get(model, 0) + sentences
            self.batches[model] = self.batches.get(model, 0) + 1
            self.batch_sentences.observe(sentences)

    def render(self) -> str:
        with self._lock:
            out = [
                *_counter("nmt_requests_total", "HTTP requests answered, by path and status code.",
                          ("path", "code"), self.requests),
                *_counter("nmt_client_gone_total", "Requests whose client left before the answer, "
                          "by path and stage (sending: mid-request; waiting: for the translation).",
                          ("path", "stage"), self.gone),
                *_counter("nmt_connections_refused_total", "Connections closed unanswered, by "
                          "reason (limit: too many open; header_timeout: headers too slow).",
                          ("reason",), self.refused),
                *_counter("nmt_sentences_total", "Sentences translated, by model.", ("model",),
                          self.sentences),
                *_counter("nmt_batches_total", "Decoding calls (batches of queued requests), by "
                          "model.", ("model",), self.batches),
                "# HELP nmt_queue_sentences Sentences waiting for the decoder.",
                "# TYPE nmt_queue_sentences gauge",
                f"nmt_queue_sentences {self._queue_length()}",
                "# HELP nmt_in_flight_requests Requests received and not yet answered.",
                "# TYPE nmt_in_flight_requests gauge",
                f"nmt_in_flight_requests {self._in_flight()}",
                "# HELP nmt_batch_sentences Sentences per decoding call.",
                "# TYPE nmt_batch_sentences histogram",
                *self.batch_sentences.lines("nmt_batch_sentences"),
                "# HELP nmt_request_seconds Seconds from a /translate request to its answer.",
                "# TYPE nmt_request_seconds histogram",
                *self.latency.lines("nmt_request_seconds"),
            ]  # fmt: skip
        return "\n".join(out) + "\n"
