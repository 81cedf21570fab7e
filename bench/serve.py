"""`make bench-serve`: `nmt serve` under 1, 8, 32 and 128 concurrent clients against `nmt
translate` on the same sentences, on the loopback interface.

    python -m bench.serve --run checkpoints/multi30k-transformer-de-en
    python -m bench.serve --run RUN --sentences test.de --requests 200 --clients 1,8,32,128

Each client sends one sentence per request over a kept-alive connection and waits for the answer
before sending the next; a level ends when all `--requests` sentences are answered or after
`--time-limit` seconds (the count says how many were). `nmt translate` decodes the same sentences
from a file before and after the server levels; its throughput is the decoding time it reports
(model loading excluded, as the server's start is). A last `nmt translate --output-format jsonl`
computes the attention for its alignments as the server does, to show what that costs.
Results: bench/results/serve-TIMESTAMP.json.
"""

from __future__ import annotations

import argparse
import gzip
import http.client
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench.common import (
    NMT,
    OFFLINE,
    ROOT,
    check,
    machine,
    machine_line,
    print_table,
    run_child,
    write_results,
)

DEFAULT_RUN = ROOT / "checkpoints" / "multi30k-transformer-de-en"
MULTI30K = Path(os.environ.get("MULTI30K", ROOT.parent / "shared" / "data" / "multi30k"))
START_TIMEOUT = 180.0
TARGET_RATIO = 0.8  # serve at TARGET_CLIENTS clients vs translate on a file
TARGET_CLIENTS = 32


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", type=Path, default=DEFAULT_RUN, help="run directory or .pt")
    parser.add_argument(
        "--sentences", type=Path, default=MULTI30K / "test_2016_flickr.de.gz", help="source text"
    )
    parser.add_argument("--requests", type=int, default=400, help="sentences per level")
    parser.add_argument("--clients", default="1,8,32,128", help="concurrency levels")
    parser.add_argument("--time-limit", type=float, default=60.0, help="seconds per level")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument(
        "--threads", type=int, default=0, help="torch CPU threads of both (OMP_NUM_THREADS)"
    )
    parser.add_argument(
        "--max-wait-ms", type=float, default=None, help="the server's --max-wait-ms (its default)"
    )
    return parser.parse_args()


def read_sentences(path: Path, count: int) -> list[str]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as handle:  # type: ignore[operator]
        lines = [line.strip() for line in handle if line.strip()]
    return lines[:count]


def translate_file(
    run: Path, sentences: list[str], device: str, jsonl: bool = False
) -> dict[str, Any]:
    """`nmt translate` on the sentences: sentences/s from the decoding time it reports. With
    `jsonl` it writes JSONL, whose alignments make it compute the attention, as the server does."""
    with tempfile.TemporaryDirectory() as tmp:
        src, out = Path(tmp) / "src.txt", Path(tmp) / "out.txt"
        src.write_text("\n".join(sentences) + "\n", encoding="utf-8")
        fmt = ["--output-format", "jsonl"] if jsonl else []
        child = run_child([*NMT, "translate", run, "-i", src, "-o", out, "--device", device, *fmt])
        check(child, "nmt translate")
        lines = out.read_text(encoding="utf-8").splitlines()
        translations = [json.loads(x)["translation"] for x in lines] if jsonl else lines
    found = re.search(r"translated ([\d,]+) lines in ([\d.]+) s", child.stdout)
    if not found:
        sys.exit(f"nmt translate did not report its time:\n{child.stdout[-2000:]}")
    seconds = float(found.group(2))
    return {
        "what": "nmt translate (file, jsonl)" if jsonl else "nmt translate (file)",
        "clients": None,
        "sentences": len(sentences),
        "seconds": seconds,
        "sentences_per_s": len(sentences) / seconds,
        "translations": translations,
    }


def in_flight_bound(
    run: Path, sentences: list[str], clients: int, device: str
) -> list[dict[str, Any]]:
    """Decoding alone with at most `clients` sentences in flight, the most that `clients` clients
    of one sentence each can give the server: the Translator (model loading and SentencePiece
    excluded) on chunks of `clients` sentences, in arrival order (the server's batches at best)
    and sorted by length (the best such chunks can be), with the attention that the server's
    alignments need. Run after the server has stopped, in this process."""
    from nmt.inference import Translator, set_up_process

    set_up_process(0)  # as `nmt serve` and `nmt translate` set up theirs
    translator = Translator.load(run, device)
    src_ids = translator.encode(sentences, 0, "benchmark input")
    translator.decode(src_ids[:clients], attention=True)  # warm-up
    arrival = list(range(len(src_ids)))
    by_length = sorted(arrival, key=lambda i: len(src_ids[i]))
    rows = []
    for name, order in (("arrival order", arrival), ("sorted by length", by_length)):
        texts: dict[int, str] = {}
        start = time.perf_counter()
        for first in range(0, len(order), clients):
            chunk = order[first : first + clients]
            hyps = translator.decode([src_ids[i] for i in chunk], attention=True)
            texts.update(
                zip(chunk, (translator.tgt_tok.decode(n[0].tokens) for n in hyps), strict=True)
            )
        seconds = time.perf_counter() - start
        rows.append(
            {
                "what": f"decoding alone, {clients} at a time, {name}",
                "clients": None,
                "sentences": len(src_ids),
                "seconds": seconds,
                "sentences_per_s": len(src_ids) / seconds,
                "translations": texts,
            }
        )
    return rows


class ServerChild:
    """`nmt serve RUN --port 0` on 127.0.0.1, its address read from its log."""

    def __init__(self, run: Path, device: str, max_wait_ms: float | None = None) -> None:
        argv = [*map(str, NMT), "serve", str(run), "--port", "0", "--device", device]
        if max_wait_ms is not None:
            argv += ["--max-wait-ms", str(max_wait_ms)]
        print("  $", " ".join(argv), flush=True)
        self.process = subprocess.Popen(
            argv, cwd=ROOT, env={**os.environ, **OFFLINE}, stderr=subprocess.PIPE, text=True
        )
        self.address: tuple[str, int] | None = None
        ready = threading.Event()
        threading.Thread(target=self._watch, args=(ready,), daemon=True).start()
        if not ready.wait(START_TIMEOUT) or self.address is None:
            self.stop()
            sys.exit("nmt serve did not start")

    def _watch(self, ready: threading.Event) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            found = re.search(r"serving on http://(127\.0\.0\.1):(\d+)", line)
            if found:
                self.address = (found.group(1), int(found.group(2)))
                ready.set()
        ready.set()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()


def post(connection: http.client.HTTPConnection, sentence: str) -> str:
    body = json.dumps({"text": sentence}).encode("utf-8")
    connection.request("POST", "/translate", body, {"Content-Type": "application/json"})
    response = connection.getresponse()
    data = json.loads(response.read())
    if response.status != 200:
        raise RuntimeError(f"HTTP {response.status}: {data}")
    return str(data["translations"][0]["translation"])


def decoding_calls(address: tuple[str, int]) -> tuple[float, float]:
    """(sentences, decoding calls) so far, from the server's /metrics (all models summed)."""
    connection = http.client.HTTPConnection(*address, timeout=60)
    connection.request("GET", "/metrics")
    text = connection.getresponse().read().decode("utf-8")
    connection.close()
    totals = {"nmt_sentences_total": 0.0, "nmt_batches_total": 0.0}
    for line in text.splitlines():
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in totals:
            totals[name] += float(line.rsplit(" ", 1)[1])
    return totals["nmt_sentences_total"], totals["nmt_batches_total"]


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of process `pid` so far (Linux /proc), None elsewhere."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


def load_level(
    address: tuple[str, int],
    sentences: list[str],
    clients: int,
    time_limit: float,
    server_pid: int | None = None,
) -> dict[str, Any]:
    """`clients` threads, each sending the next unsent sentence until all are sent or time is up.
    Also the CPU seconds the clients (this process) and the server used meanwhile: on a small
    machine the load generator takes cores from the server it measures."""
    lock = threading.Lock()
    next_index = 0
    latencies: list[float] = []
    translations: dict[int, str] = {}
    failures: list[str] = []
    deadline = time.monotonic() + time_limit

    def client() -> None:
        nonlocal next_index
        connection = http.client.HTTPConnection(*address, timeout=time_limit + 30)
        while time.monotonic() < deadline:
            with lock:
                index = next_index
                next_index += 1
            if index >= len(sentences):
                break
            sent = time.perf_counter()
            try:
                text = post(connection, sentences[index])
            except (OSError, RuntimeError, ValueError) as exc:  # the level fails, not the thread
                failures.append(f"{type(exc).__name__}: {exc}")
                break
            with lock:
                latencies.append(time.perf_counter() - sent)
                translations[index] = text
        connection.close()

    started = time.perf_counter()
    client_cpu = time.process_time()
    server_cpu = None if server_pid is None else cpu_seconds(server_pid)
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - started
    client_cpu = time.process_time() - client_cpu
    server_after = None if server_pid is None else cpu_seconds(server_pid)
    if failures or not latencies:
        sys.exit(f"{clients} client(s): {len(failures)} requests failed, e.g. {failures[:1]}")
    latencies.sort()
    return {
        "what": "nmt serve",
        "clients": clients,
        "sentences": len(latencies),
        "seconds": seconds,
        "sentences_per_s": len(latencies) / seconds,
        "p50_ms": 1000 * latencies[len(latencies) // 2],
        "p99_ms": 1000 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))],
        "client_cpu_s": client_cpu,
        "server_cpu_s": None if server_after is None else server_after - (server_cpu or 0.0),
        "translations": translations,
    }


def main() -> None:
    args = parse_args()
    if not (args.run.is_dir() or args.run.is_file()):
        sys.exit(f"{args.run}: no such run; train one (make recipe) or pass --run")
    if args.threads:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # inherited by both children
    sentences = read_sentences(args.sentences, args.requests)
    levels = [int(n) for n in args.clients.split(",")]
    print(f"{len(sentences)} sentences of {args.sentences}; run {args.run}", flush=True)
    rows = [translate_file(args.run, sentences, args.device)]
    server = ServerChild(args.run, args.device, args.max_wait_ms)
    try:
        assert server.address is not None
        warm = http.client.HTTPConnection(*server.address, timeout=60)
        for sentence in sentences[:5]:
            post(warm, sentence)
        warm.close()
        for clients in levels:
            print(f"serve: {clients} client(s)", flush=True)
            sentences_before, calls_before = decoding_calls(server.address)
            row = load_level(
                server.address, sentences, clients, args.time_limit, server.process.pid
            )
            sentences_after, calls_after = decoding_calls(server.address)
            calls = max(calls_after - calls_before, 1.0)
            row["sentences_per_call"] = (sentences_after - sentences_before) / calls
            rows.append(row)
    finally:
        server.stop()
    rows.append(translate_file(args.run, sentences, args.device))
    # The same work as the server (attention for the alignments), for comparison only: the
    # target is judged against the plain file runs above.
    rows.append(translate_file(args.run, sentences, args.device, jsonl=True))
    rows += in_flight_bound(args.run, sentences, judged_level(levels), args.device)
    report(rows, levels, vars(args))


def judged_level(levels: list[int]) -> int:
    """The client count the target is judged at: TARGET_CLIENTS, else the most measured."""
    return TARGET_CLIENTS if TARGET_CLIENTS in levels else max(levels)


def report(rows: list[dict[str, Any]], levels: list[int], settings: dict[str, Any]) -> None:
    reference = rows[0]["translations"]
    for row in rows[1:]:
        got = row.pop("translations")
        pairs = got.items() if isinstance(got, dict) else enumerate(got)
        row["same_as_translate"] = sum(reference[i] == text for i, text in pairs)
    rows[0].pop("translations")
    plain = [r for r in rows if r["what"] == "nmt translate (file)"]
    best_file = max(r["sentences_per_s"] for r in plain)
    summary: dict[str, Any] = {"translate_sentences_per_s": best_file}
    for row in rows:
        if row["clients"] is not None or row["what"].startswith("decoding alone"):
            row["ratio_to_translate"] = row["sentences_per_s"] / best_file
    judged = judged_level(levels)
    top = [r for r in rows if r["clients"] == judged]
    if top:
        summary["judged_clients"] = judged
        summary["ratio_at_judged_clients"] = top[0]["sentences_per_s"] / best_file
        with_attention = [r for r in rows if r["what"] == "nmt translate (file, jsonl)"]
        if with_attention:
            summary["ratio_to_jsonl_translate"] = (
                top[0]["sentences_per_s"] / with_attention[0]["sentences_per_s"]
            )
    payload = {"machine": machine(), "settings": settings, "rows": rows, **summary}
    path = write_results("serve", payload)
    columns = ["what", "clients", "sentences", "seconds", "sentences_per_s", "p50_ms", "p99_ms",
               "sentences_per_call", "client_cpu_s", "server_cpu_s",
               "ratio_to_translate"]  # fmt: skip
    print(machine_line(payload["machine"]))
    print_table(rows, [*columns, "same_as_translate"])
    if top:
        ratio = summary["ratio_at_judged_clients"]
        verdict = "meets" if ratio >= TARGET_RATIO else "misses"
        print(
            f"\nserve at {judged} clients / translate (the faster of its two runs): "
            f"{ratio:.2f} ({verdict} the {TARGET_RATIO}x target)"
        )
        if "ratio_to_jsonl_translate" in summary:
            print(f"serve / translate to JSONL (attention computed, as in the server): "
                  f"{summary['ratio_to_jsonl_translate']:.2f}")  # fmt: skip
    for row in rows:
        if row["what"].startswith("decoding alone"):
            print(f"{row['what']} / translate: {row['ratio_to_translate']:.2f} (no server: "
                  f"the most {judged} clients could get)")  # fmt: skip
    print(f"written: {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
