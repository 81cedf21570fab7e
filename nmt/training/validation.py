"""Validation during training: the validation split held in memory, its teacher-forced loss and
the BLEU / chrF of its decoding, and what a validation decides (best.pt, early stopping, the
plateau schedule), identically on every rank.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch

from nmt import checkpoint as ckpt
from nmt.config import RunConfig
from nmt.data.batching import TokenBatchSampler
from nmt.data.spm import Tokenizer
from nmt.data.store import PreparedData
from nmt.decoding.beam import decode_corpus
from nmt.errors import NmtError, TrainingError
from nmt.metrics import corpus_scores
from nmt.training import checkpoint as saving
from nmt.training.distributed import broadcast_object
from nmt.training.feeding import make_batch, to_device
from nmt.training.loss import label_smoothed_nll
from nmt.training.state import Run, TrainState, save_training_checkpoint

VALID_SPLIT_NAMES = ("valid", "validation", "dev", "val")
# sacrebleu tokenizers for targets written without spaces between words (no extra packages).
BLEU_TOKENIZE = {"zh": "zh", "ja": "char", "ko": "char", "th": "char"}


@dataclass
class ValidSet:
    """The validation split, held in memory, and what scoring it needs."""

    src_ids: list[list[int]]
    tgt_ids: list[list[int]]
    refs: list[str]  # reference texts, for BLEU
    tgt_tok: Tokenizer  # turns hypotheses back into text
    bleu_tokenize: str | None
    truncated: int = 0  # pairs cut to the model's max_positions

    def __len__(self) -> int:
        return len(self.src_ids)


def load_valid_set(
    data: PreparedData, max_sentences: int, tgt_tok: Tokenizer, max_positions: int
) -> ValidSet | None:
    """The validation split (its first `max_sentences` pairs when > 0), or None without one.
    Sides longer than `max_positions` (with EOS / BOS) are cut and counted in `truncated`; the
    BLEU references stay whole."""
    name = next((n for n in VALID_SPLIT_NAMES if n in data.split_names), None)
    if name is None:
        return None
    split = data.split(name)
    if max_sentences:
        split = split.select(range(min(max_sentences, len(split))))
    limit = max_positions - 1
    src_ids, tgt_ids = list(split["src_ids"]), list(split["tgt_ids"])
    truncated = sum(len(s) > limit or len(t) > limit for s, t in zip(src_ids, tgt_ids, strict=True))
    if truncated:
        src_ids = [s[:limit] for s in src_ids]
        tgt_ids = [t[:limit] for t in tgt_ids]
    return ValidSet(
        src_ids=src_ids,
        tgt_ids=tgt_ids,
        refs=list(split["tgt"]),
        tgt_tok=tgt_tok,
        bleu_tokenize=BLEU_TOKENIZE.get(data.tgt_lang.split("-")[0].lower()),
        truncated=truncated,
    )


def valid_metric_name(cfg: RunConfig) -> str:
    """The metric that picks best.pt and drives early stopping and plateau: BLEU (higher is
    better) or the per-token validation NLL (lower is better)."""
    return "bleu" if cfg.train.valid_metric == "bleu" else "nll"


@torch.no_grad()
def validate(run: Run) -> dict[str, float]:
    """Loss, per-token NLL and perplexity by teacher forcing; with `valid_metric` bleu also BLEU
    and chrF of greedy (valid_beam 1) or beam decoding, scored with sacrebleu."""
    cfg, model, valid = run.cfg, run.raw_model, run.valid
    assert valid is not None
    was_training = model.training
    model.eval()
    sampler = TokenBatchSampler(
        [len(s) for s in valid.src_ids],
        [len(t) for t in valid.tgt_ids],
        cfg.train.batch_tokens,
        shuffle=False,
    )
    loss_sum = nll_sum = 0.0
    tokens = 0
    for indices in sampler.batches(0):
        batch = make_batch(valid.src_ids, valid.tgt_ids, indices)
        tokens += batch.num_tgt_tokens
        batch = to_device(batch, run.device)
        with run.autocast:
            logits = model(batch.src_ids, batch.src_mask, batch.tgt_in_ids)  # (B, T, V)
        loss, nll = label_smoothed_nll(logits, batch.tgt_out_ids, cfg.train.label_smoothing)
        loss_sum += float(loss)
        nll_sum += float(nll)
    tokens = max(tokens, 1)
    scores = {
        "loss": loss_sum / tokens,
        "nll": nll_sum / tokens,
        "ppl": math.exp(min(nll_sum / tokens, 100.0)),
    }
    if valid_metric_name(cfg) == "bleu":
        decode_cfg = dataclasses.replace(
            cfg.decode, beam_size=cfg.train.valid_beam, nbest=1, sample=False
        )
        with run.autocast:
            hyps = decode_corpus(model, valid.src_ids, decode_cfg, run.device)
        texts = [valid.tgt_tok.decode(nbest[0].tokens) for nbest in hyps]
        result = corpus_scores(texts, [valid.refs], tokenize=valid.bleu_tokenize)
        scores["bleu"] = float(result["bleu"])
        scores["chrf"] = float(result["chrf"])
    model.train(was_training)
    return scores


def validate_or_save(run: Run, state: TrainState) -> None:
    """`validate_and_track`; should validation itself fail (memory, a decoding bug), the training
    so far is saved to last.pt first and the run stops with one line saying so."""
    try:
        validate_and_track(run, state)
    except NmtError:
        raise
    except Exception as exc:
        if run.dist.is_distributed:
            raise  # the other ranks wait in a collective: a save needs them all
        save_training_checkpoint(run, state)
        lines = str(exc).strip().splitlines()
        raise TrainingError(
            f"validation at update {state.step} failed ({type(exc).__name__}: "
            f"{lines[0][:160] if lines else ''}); the training is saved in "
            f"{run.run_dir / ckpt.LAST}: resume with `nmt train --resume {run.run_dir}` (a "
            "smaller train.valid_max_sentences or train.batch_tokens may help)"
        ) from exc


def validate_and_track(run: Run, state: TrainState) -> None:
    """Validate once (rank 0), share the scores, and update best score, best.pt, the
    early-stopping count and the plateau schedule identically on every rank."""
    scores = validate(run) if run.dist.is_main and run.valid is not None else None
    scores = broadcast_object(scores, run.dist)
    if scores is None:
        return
    metric = valid_metric_name(run.cfg)
    higher_is_better = metric == "bleu"
    value = scores[metric]
    best = state.best_score
    improved = best is None or (value > best if higher_is_better else value < best)
    if improved:
        state.best_score, state.best_step, state.bad_validations = value, state.step, 0
        if run.dist.is_main:
            payload = ckpt.weights_payload(run.meta, state.step, run.raw_model.state_dict())
            saving.save_checkpoint(run.run_dir / ckpt.BEST, payload)
    else:
        state.bad_validations += 1
    lr_cut = run.schedule.observe(value, higher_is_better)
    run.tick(state)
    row = {"kind": "valid", "step": state.step, **scores, "best": state.best_score,
           "wall_seconds": state.wall_seconds}  # fmt: skip
    run.logger.log(row | {"lr_cut": lr_cut})
    shown = ", ".join(f"{k} {v:.4g}" for k, v in scores.items())
    standing = f" (best {metric} {state.best_score:.4g} @ {state.best_step})"
    run.progress.note(
        f"valid @ {state.step}: {shown}{' (best)' if improved else standing}"
        + (" - learning rate lowered" if lr_cut else "")
    )
