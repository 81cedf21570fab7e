"""Continuous batching tried again (bench/NOTES.md lever 35): sentences joining a running beam
search, against the calls that `nmt serve` makes, in one process with no server.

    python -m bench.continuous --run checkpoints/m30k-de-en-2k/best.pt [--rounds 3]

`--clients` clients of one sentence each are emulated without a network: a sentence is sent again
as soon as the one before it is answered, so at most that many are in flight. Three schedules
decode the first `--requests` test sentences, beam search with the run's settings and the
attention computed (the server's alignments need it), taking turns in every round:

- file: `nmt translate`'s way, all sentences in length-sorted batches of `decode.batch_tokens`;
- calls: the server's way, a call takes every queued sentence and hands each back as its search
  ends; those answered queue their next sentence for the following call;
- continuous: a sentence joins the running search at the next step after another one ended
  (`ContinuousSearch`): at most one call's worth of sentences is ever in flight, and no step
  waits for the longest sentence of a call.

`ContinuousSearch` is this experiment's, not nmt's: Transformer only, no constraints, coverage
penalty, min_len or no_repeat_ngram. It keeps the source side once per sentence (lever 17) and
the self-attention caches time-major (lever 18); rows that joined late read their own part of
the caches through a mask, at their own positions. Each schedule's translations are checked
against the file's. Results: bench/results/continuous-TIMESTAMP.json.
"""

from __future__ import annotations

import argparse
import gzip
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from bench.common import ROOT, machine, machine_line, median, print_table, write_results
from nmt.config import BOS_ID, EOS_ID, DecodeConfig
from nmt.data.batching import make_src_batch
from nmt.decoding.beam import (
    NEG_INF,
    Hypothesis,
    _FinishedPool,
    _go_on,
    ban_tokens,
    decode_corpus,
    iter_beam_search,
    length_penalty,
    max_output_lengths,
    select_top_k,
)
from nmt.inference import Translator, set_up_process
from nmt.models.attention import _merge_heads, _split_heads
from nmt.models.transformer import TransformerModel

MULTI30K_TEST = ROOT.parent / "shared" / "data" / "multi30k" / "test_2016_flickr.de.gz"


class ContinuousSearch:
    """A beam search that sentences join between its steps. `add` queues a sentence; `step`
    lets the queued ones join (encoded together), advances every live hypothesis by one token
    and returns the sentences whose search ended, with their n-best lists.

    Rows are K consecutive hypotheses per live sentence, as in nmt's search. The self-attention
    caches are (C, R, H, dh) with column c holding global step `base + c`; a sentence that joined
    at global step g0 owns the columns from g0 on, masked before, and its positions count from
    g0. Columns older than every live sentence are dropped when the caches are regathered.
    """

    def __init__(self, model: TransformerModel, cfg: DecodeConfig, sentences: int) -> None:
        assert not (cfg.coverage_penalty or cfg.min_len or cfg.no_repeat_ngram)
        self.model, self.cfg, self.beam = model, cfg, cfg.beam_size
        self.layers = model._decoder
        self.pool = _FinishedPool(sentences, self.beam, torch.device("cpu"))
        self.src_lengths = torch.zeros(sentences, dtype=torch.long)
        self.pending: list[tuple[int, Sequence[int]]] = []
        self.global_step = 0
        self.base = 0  # global step of cache column 0
        self.alive = torch.zeros(0, dtype=torch.long)  # (n,) sentence ids
        self.joined = torch.zeros(0, dtype=torch.long)  # (n,) global step each one joined at
        self.max_lens = torch.zeros(0, dtype=torch.long)  # (n,)
        self.scores = torch.zeros(0, self.beam)  # (n, K)
        self.prev = torch.zeros(0, dtype=torch.long)  # (n*K,) last tokens
        self.parents = torch.zeros(0, dtype=torch.long)  # (n*K,) rows the caches must take
        self.src_mask = torch.zeros(0, 0, dtype=torch.bool)  # (n, S)
        self.cross_k: list[torch.Tensor] = []  # per layer (n, H, S, dh)
        self.cross_v: list[torch.Tensor] = []
        self.self_k: list[torch.Tensor] = []  # per layer (C, n*K, H, dh)
        self.self_v: list[torch.Tensor] = []
        # Per sentence, per own step: tokens, parent beams, cumulative log-probs (K each) and
        # the attention rows (K, L, H, S), for the back-pointer walk when it ends.
        self.history: dict[int, list[tuple[list[int], list[int], list[float], Any]]] = {}
        self.rows_per_step: list[int] = []

    def add(self, sentence: int, src_ids: Sequence[int]) -> None:
        self.pending.append((sentence, src_ids))

    @torch.inference_mode()
    def step(self) -> list[tuple[int, list[Hypothesis]]]:
        self._regather()
        self._join()
        n = self.alive.numel()
        if not n:
            return []
        k = self.beam
        self.rows_per_step.append(n)
        log_probs, attn = self._decode_step()
        at_max = self.max_lens <= self.global_step - self.joined  # (n,)
        force_eos = at_max.repeat_interleave(k) if bool(at_max.any()) else None
        log_probs = ban_tokens(log_probs, 0, force_eos, self.cfg, None)
        top = select_top_k(self.scores, log_probs.view(n, k, -1), 2 * k)
        is_eos = top[2] == EOS_ID
        self.pool.finish(self.alive, self.global_step, *top[:2], is_eos)
        scores, beams, tokens = _go_on(*top, is_eos, k)
        self._record(tokens, beams, scores, attn.view(n, k, *attn.shape[1:]))
        self.global_step += 1
        done = self.pool.is_full(self.alive) | ~torch.isfinite(scores[:, 0])
        rows = beams + torch.arange(n)[:, None] * k
        ended = []
        if int(done.sum()):
            leaving = zip(self.alive[done].tolist(), self.joined[done].tolist(), strict=True)
            ended = [self._collect(sentence, joined) for sentence, joined in leaving]
            keep = ~done
            rows, scores, tokens = rows[keep], scores[keep], tokens[keep]
            self._leave(keep.nonzero().view(-1))
        self.scores, self.prev, self.parents = scores, tokens.reshape(-1), rows.reshape(-1)
        return ended

    # ---- the rows: joining, leaving, the caches -------------------------------------------------

    def _regather(self) -> None:
        """The caches of the rows that go on, in their new order, with room for those joining;
        columns no live sentence needs are dropped."""
        first = int(self.joined.min()) if self.joined.numel() else self.global_step
        start, used = first - self.base, self.global_step - first
        rows, joining = self.parents.numel(), len(self.pending) * self.beam
        model = self.model
        shape = (model.heads, model.d_model // model.heads)

        def regather(cache: torch.Tensor | None) -> torch.Tensor:
            capacity = max(16, used + 1) if cache is None else max(cache.size(0), used + 1)
            out = torch.empty(capacity, rows + joining, *shape)
            if used and cache is not None:
                torch.index_select(cache[start : start + used], 1, self.parents,
                                   out=out[:used, :rows])  # fmt: skip
            out[:used, rows:] = 0  # masked, but never NaN: 0 weight times NaN would be NaN
            return out

        layers = range(len(self.layers))
        self.self_k = [regather(self.self_k[i] if self.self_k else None) for i in layers]
        self.self_v = [regather(self.self_v[i] if self.self_v else None) for i in layers]
        self.base = first

    def _join(self) -> None:
        if not self.pending:
            return
        sentences = torch.tensor([s for s, _ in self.pending])
        src_ids, src_mask = make_src_batch([list(ids) for _, ids in self.pending])
        self.pending = []
        state = self.model.encode(src_ids, src_mask)
        width = max(src_mask.size(1), self.src_mask.size(1))

        def joined(old: torch.Tensor, new: torch.Tensor, dim: int) -> torch.Tensor:
            def padded(t: torch.Tensor) -> torch.Tensor:
                return F.pad(t, [0, 0] * (t.dim() - 1 - dim) + [0, width - t.size(dim)])

            return torch.cat([padded(old), padded(new)]) if old.numel() else new

        self.src_mask = joined(self.src_mask, src_mask, 1)
        if self.cross_k:
            self.cross_k = [
                joined(a, b, 2) for a, b in zip(self.cross_k, state.cross_k, strict=True)
            ]
            self.cross_v = [
                joined(a, b, 2) for a, b in zip(self.cross_v, state.cross_v, strict=True)
            ]
        else:
            self.cross_k, self.cross_v = list(state.cross_k), list(state.cross_v)
        lengths = src_mask.sum(dim=1)
        self.src_lengths[sentences] = lengths
        count = sentences.numel()
        limits = max_output_lengths(lengths, self.cfg, self.model.max_positions)
        scores = torch.full((count, self.beam), NEG_INF)
        scores[:, 0] = 0.0
        self.alive = torch.cat([self.alive, sentences])
        self.joined = torch.cat([self.joined, torch.full((count,), self.global_step)])
        self.max_lens = torch.cat([self.max_lens, limits])
        self.scores = torch.cat([self.scores, scores])
        self.prev = torch.cat([self.prev, torch.full((count * self.beam,), BOS_ID)])

    def _leave(self, keep: torch.Tensor) -> None:
        """Only the sentences `keep` (n',) go on: their source side and bookkeeping."""
        self.alive, self.joined = self.alive[keep], self.joined[keep]
        self.max_lens, self.src_mask = self.max_lens[keep], self.src_mask[keep]
        self.cross_k = [t.index_select(0, keep) for t in self.cross_k]
        self.cross_v = [t.index_select(0, keep) for t in self.cross_v]

    # ---- one step of the model ----------------------------------------------------------------

    def _decode_step(self) -> tuple[torch.Tensor, torch.Tensor]:
        """`TransformerModel.decode_step` with a position and a first cache column per row."""
        model, k = self.model, self.beam
        column = self.global_step - self.base
        positions = (self.global_step - self.joined).repeat_interleave(k)  # (R,)
        x = model.tgt_embed(self.prev[:, None]) * model.embed_scale
        x = x + model.position_table[positions][:, None, :]  # (R, 1, D)
        first = (self.joined - self.base).repeat_interleave(k)  # (R,)
        mask: torch.Tensor | None = torch.arange(column + 1)[None, :] >= first[:, None]
        mask = None if bool(mask.all()) else mask[:, None, None, :]  # (R, 1, 1, C)
        key_mask = self.src_mask[:, None, None, :]
        weights = []
        for i, layer in enumerate(self.layers):
            self.self_k[i] = _room(self.self_k[i], column)
            self.self_v[i] = _room(self.self_v[i], column)
            attn = layer.self_attn
            q, key, value = _split_heads(attn.qkv_proj(layer.norm1(x)), 3, attn.heads)
            self.self_k[i][column] = key[:, :, 0]
            self.self_v[i][column] = value[:, :, 0]
            keys = self.self_k[i][: column + 1].permute(1, 2, 0, 3)  # (R, H, C, dh)
            values = self.self_v[i][: column + 1].permute(1, 2, 0, 3)
            out = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask)
            x = x + attn.out_proj(_merge_heads(out))
            x, w = layer._cross_and_ffn(x, self.cross_k[i], self.cross_v[i], key_mask, True)
            assert w is not None
            weights.append(w[:, :, 0])
        log_probs = F.log_softmax(model._logits(x[:, 0]).float(), dim=-1)
        return log_probs, torch.stack(weights, dim=1)  # (R, V), (R, L, H, S)

    # ---- results --------------------------------------------------------------------------------

    def _record(
        self, tokens: torch.Tensor, beams: torch.Tensor, scores: torch.Tensor, attn: torch.Tensor
    ) -> None:
        rows = zip(tokens.tolist(), beams.tolist(), scores.tolist(), attn.unbind(0), strict=True)
        for sentence, row in zip(self.alive.tolist(), rows, strict=True):
            self.history.setdefault(sentence, []).append(row)

    def _collect(self, sentence: int, joined: int) -> tuple[int, list[Hypothesis]]:
        """The n-best list of `sentence`, ranked and walked as nmt's search does."""
        k, cfg = self.beam, self.cfg
        history = self.history.pop(sentence)
        log_prob = self.pool.logp[sentence, :k]
        ends = self.pool.step[sentence, :k] - joined  # own steps
        valid = torch.isfinite(log_prob)
        score = torch.where(valid, log_prob / length_penalty(ends + 1, cfg), log_prob)
        order = score.argsort(descending=True, stable=True).tolist()
        src_length = int(self.src_lengths[sentence])
        out = []
        for j in [j for j in order if bool(valid[j])][: cfg.nbest]:
            beam, end = int(self.pool.beam[sentence, j]), int(ends[j])
            tokens, cum, rows = [EOS_ID], [float(log_prob[j])], []
            for u in range(end, -1, -1):
                step_tokens, step_beams, step_cum, attn = history[u]
                if u < end:
                    tokens.append(step_tokens[beam])
                    cum.append(step_cum[beam])
                    beam = step_beams[beam]
                rows.append(attn[beam, ..., :src_length])
            cumulative = torch.tensor(cum[::-1])
            token_scores = cumulative - F.pad(cumulative[:-1], (1, 0))
            matrix = torch.stack(rows[::-1]).float()
            out.append(Hypothesis(tokens[:0:-1], float(log_prob[j]), float(score[j]), matrix,
                                  token_scores.tolist()))  # fmt: skip
        return sentence, out


def _room(cache: torch.Tensor, column: int) -> torch.Tensor:
    """`cache` with a column `column`, twice as long when it is full."""
    if column < cache.size(0):
        return cache
    grown = cache.new_zeros(2 * cache.size(0), *cache.shape[1:])
    grown[:column] = cache[:column]
    return grown


# ---- the schedules ------------------------------------------------------------------------------

Results = dict[int, list[Hypothesis]]


def file_schedule(model: TransformerModel, cfg: DecodeConfig, src: list[list[int]]) -> Results:
    return dict(enumerate(decode_corpus(model, src, cfg, "cpu", True)))


def calls_schedule(
    model: TransformerModel, cfg: DecodeConfig, src: list[list[int]], clients: int
) -> Results:
    queued, following, out = list(range(min(clients, len(src)))), clients, {}
    while queued:
        call, queued = queued, []
        src_ids, src_mask = make_src_batch([src[i] for i in call])
        for ended in iter_beam_search(model, src_ids, src_mask, cfg, True, early=True):
            for j, nbest in ended:
                out[call[j]] = nbest
                if following < len(src):
                    queued.append(following)
                    following += 1
    return out


def continuous_schedule(
    model: TransformerModel, cfg: DecodeConfig, src: list[list[int]], clients: int
) -> tuple[Results, ContinuousSearch]:
    search = ContinuousSearch(model, cfg, len(src))
    following, out = min(clients, len(src)), {}
    for i in range(following):
        search.add(i, src[i])
    while len(out) < len(src):
        for sentence, nbest in search.step():
            out[sentence] = nbest
            if following < len(src):
                search.add(following, src[following])
                following += 1
    return out, search


def counting_steps(model: TransformerModel) -> Callable[[], tuple[int, int]]:
    """Wrap the model's `decode_step` to count calls and rows; returns a reader of the counts."""
    counts = [0, 0]
    step = model.decode_step

    def counted(prev_ids: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        counts[0] += 1
        counts[1] += prev_ids.numel()
        return step(prev_ids, *args, **kwargs)

    model.decode_step = counted  # type: ignore[method-assign]
    return lambda: (counts[0], counts[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", type=Path, required=True, help="run directory or .pt")
    parser.add_argument("--sentences", type=Path, default=MULTI30K_TEST, help="source text")
    parser.add_argument("--requests", type=int, default=400, help="sentences decoded")
    parser.add_argument("--clients", type=int, default=32, help="sentences in flight at most")
    parser.add_argument("--rounds", type=int, default=3, help="turns of the three schedules")
    args = parser.parse_args()
    set_up_process(0)
    translator = Translator.load(args.run, "cpu")
    (model,) = translator.models
    if not isinstance(model, TransformerModel):
        raise SystemExit(f"{args.run}: the experiment's search is for a Transformer")
    with gzip.open(args.sentences, "rt", encoding="utf-8") as f:
        lines = [line.rstrip("\n") for _, line in zip(range(args.requests), f, strict=False)]
    src = translator.encode(lines, 0, str(args.sentences))
    cfg = translator.cfg
    steps = counting_steps(model)
    schedules: dict[str, Callable[[], Results]] = {
        "file": lambda: file_schedule(model, cfg, src),
        "calls": lambda: calls_schedule(model, cfg, src, args.clients),
        "continuous": lambda: continuous_schedule(model, cfg, src, args.clients)[0],
    }
    reference = [nbest[0].tokens for _, nbest in sorted(file_schedule(model, cfg, src).items())]
    rows = []
    for name, schedule in schedules.items():  # a warm-up, the counts and the check
        before = steps()
        found = schedule()
        calls, hyp_rows = (a - b for a, b in zip(steps(), before, strict=True))
        if name == "continuous":
            search = continuous_schedule(model, cfg, src, args.clients)[1]
            calls, hyp_rows = len(search.rows_per_step), cfg.beam_size * sum(search.rows_per_step)
        same = sum(found[i][0].tokens == tokens for i, tokens in enumerate(reference))
        rows.append({"schedule": name, "decoder_steps": calls, "rows_per_step": hyp_rows / calls,
                     "same_as_file": same, "seconds": []})  # fmt: skip
    for turn in range(args.rounds):
        for row in rows:
            start = time.perf_counter()
            schedules[row["schedule"]]()
            row["seconds"].append(time.perf_counter() - start)
        print(f"round {turn + 1}: " + ", ".join(f"{r['schedule']} {r['seconds'][-1]:.2f} s"
                                                for r in rows), flush=True)  # fmt: skip
    file_seconds = median(rows[0]["seconds"])
    for row in rows:
        row["median_s"] = median(row["seconds"])
        row["sentences_per_s"] = len(src) / row["median_s"]
        row["ratio_to_file"] = file_seconds / row["median_s"]
    info = machine()
    print(machine_line(info))
    print(f"{len(src)} sentences, {args.clients} in flight at most, beam {cfg.beam_size}, "
          f"attention computed, medians of {args.rounds} rounds")  # fmt: skip
    shown = [r | {"median_s": f"{r['median_s']:.2f}", "ratio_to_file": f"{r['ratio_to_file']:.2f}"}
             for r in rows]  # fmt: skip
    print_table(shown, ["schedule", "median_s", "sentences_per_s", "ratio_to_file",
                        "decoder_steps", "rows_per_step", "same_as_file"])  # fmt: skip
    path = write_results("continuous", {"machine": info, "settings": vars(args) | {
        "run": str(args.run), "sentences": str(args.sentences)}, "rows": rows})  # fmt: skip
    print(f"results: {path}")


if __name__ == "__main__":
    main()
