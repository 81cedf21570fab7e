"""Guided alignment (`train.guided_alignment`, nmt/training/loss.py): the loss against numbers
worked by hand (its exact minimum is the entropy of the link rows, 0 for single links), the head
it supervises, the errors it gives, and a real run on eflomal-aligned data whose supervised head
learns the links; `nmt translate --alignments-out` then reads that head."""

from __future__ import annotations

import math
import random
from pathlib import Path

import pytest
import torch
from corpus_support import write_reverse_corpus

from nmt.config import RunConfig, from_dict
from nmt.data.batching import collate
from nmt.errors import ConfigError, DataError
from nmt.training.loss import guided_alignment_loss, label_smoothed_nll, training_loss


def test_loss_by_hand() -> None:
    """Target piece 0 links source pieces 0 and 2, piece 1 links piece 1, piece 2 nothing."""
    links = torch.tensor([[[1, 0, 1], [0, 1, 0], [0, 0, 0]]], dtype=torch.bool)
    attention = torch.tensor([[[0.2, 0.3, 0.5], [0.1, 0.6, 0.3], [0.9, 0.05, 0.05]]])
    expected = -(0.5 * math.log(0.2) + 0.5 * math.log(0.5)) - math.log(0.6)
    assert float(guided_alignment_loss(attention, links)) == pytest.approx(expected, rel=1e-6)


def test_loss_minimum_is_the_entropy_of_the_links() -> None:
    """Cross-entropy: each row's minimum is at attention = normalised links and equals that
    row's entropy (log 2 for the two-link row here, 0 for the single links); no other attention
    row (random ones drawn here) goes below it."""
    links = torch.tensor([[[1, 0, 1, 0], [0, 1, 0, 0], [0, 0, 0, 1]]], dtype=torch.bool)
    gold = links.float() / links.float().sum(-1, keepdim=True)
    minimum = float(guided_alignment_loss(gold, links))
    assert minimum == pytest.approx(math.log(2), rel=1e-6)
    single = links.clone()
    single[0, 0, 2] = False  # every target piece linked once: the minimum is exactly 0
    assert float(guided_alignment_loss(single.float(), single)) == 0.0
    gen = torch.Generator().manual_seed(0)
    for _ in range(200):
        other = torch.softmax(torch.randn(1, 3, 4, generator=gen) * 3, dim=-1)
        assert float(guided_alignment_loss(other, links)) >= minimum - 1e-6
    # The gradient with respect to the attention logits vanishes at the minimum.
    logits = gold.clamp(min=1e-30).log().requires_grad_(True)
    guided_alignment_loss(torch.softmax(logits, -1), links).backward()
    assert logits.grad.abs().max() < 1e-6


def test_training_loss_supervises_head_0_of_the_penultimate_layer() -> None:
    torch.manual_seed(0)
    batch = collate([[5, 6], [7]], [[8, 9], [10]], [0, 1], [[0, 1, 1, 0], [0, 0]])
    b, t, s = batch.tgt_out_ids.size(0), batch.tgt_out_ids.size(1), batch.src_ids.size(1)
    logits = torch.randn(b, t, 12)
    attention = torch.softmax(torch.randn(b, 3, 2, t, s), dim=-1)  # (B, L=3, H=2, T, S)
    attention[:, 1, 0] = batch.alignment.float()  # head 0 of layer -2 follows the single links
    cfg = from_dict(RunConfig, {"train": {"guided_alignment": 0.7, "label_smoothing": 0.1}})
    loss, nll = training_loss((logits, attention), batch, cfg.train)
    plain, plain_nll = label_smoothed_nll(logits, batch.tgt_out_ids, 0.1)
    torch.testing.assert_close(loss, plain)  # the supervised head is at its minimum, 0
    torch.testing.assert_close(nll, plain_nll)
    attention[:, 1, 0] = 1.0 / s  # now uniform: the loss grows by 0.7 * 3 links * log S
    loss, _ = training_loss((logits, attention), batch, cfg.train)
    torch.testing.assert_close(loss, plain + 0.7 * 3 * math.log(s))
    off = from_dict(RunConfig, {"train": {"label_smoothing": 0.1}})  # lambda 0: logits alone
    torch.testing.assert_close(training_loss(logits, batch, off.train).loss, plain)


def test_config_needs_a_penultimate_layer() -> None:
    one_layer = {"arch": "transformer", "transformer": {"dec_layers": 1}}
    with pytest.raises(ConfigError, match="dec_layers >= 2"):
        from_dict(RunConfig, {"model": one_layer, "train": {"guided_alignment": 1.0}})
    from_dict(RunConfig, {"model": {"arch": "rnn"}, "train": {"guided_alignment": 1.0}})
    with pytest.raises(ConfigError, match="guided_alignment must be >= 0"):
        from_dict(RunConfig, {"train": {"guided_alignment": -1.0}})


def test_training_without_alignments_in_the_data_is_refused(
    tiny_prepared: Path, tmp_path: Path
) -> None:
    from nmt.training.loop import train

    cfg = from_dict(RunConfig, {**_tiny(4), "train": {**_tiny(4)["train"], "guided_alignment": 1}})
    with pytest.raises(DataError, match="alignments=eflomal"):
        train(cfg, tiny_prepared, tmp_path / "run")


# ---- a real run ------------------------------------------------------------------------------


def _tiny(steps: int, guided: float = 0.0) -> dict:
    return {
        "model": {
            "arch": "transformer",
            "transformer": {"d_model": 32, "heads": 2, "enc_layers": 1, "dec_layers": 2,
                            "ffn_dim": 64, "dropout": 0.0, "max_positions": 32},
        },
        "train": {"max_steps": steps, "batch_tokens": 600, "lr": 3e-3, "warmup_steps": 5,
                  "valid_every": steps, "save_every": steps, "valid_metric": "loss",
                  "num_threads": 1, "device": "cpu", "precision": "fp32",
                  "guided_alignment": guided},
        "decode": {"beam_size": 2, "max_len_a": 1.2, "max_len_b": 4},
    }  # fmt: skip


@pytest.fixture(scope="module")
def aligned_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[float, Path]]:
    """Reverse-copy data prepared with eflomal links, and a tiny Transformer trained on it for
    120 updates without and with guided alignment (lambda 1)."""
    pytest.importorskip("eflomal")
    from rich.console import Console

    from nmt.config import PrepareConfig
    from nmt.pipeline import prepare
    from nmt.training.loop import train

    root = tmp_path_factory.mktemp("aligned")
    write_reverse_corpus(root, "train", 400, seed=1)
    write_reverse_corpus(root, "valid", 40, seed=2)
    cfg = PrepareConfig(
        src_lang="de", tgt_lang="en", vocab_size=64, hard_vocab_limit=False, alignments="eflomal"
    )
    data = root / "prepared"
    prepare(cfg, str(root / "train"), str(root / "valid"), {}, data, False, Console(quiet=True))
    threads = torch.get_num_threads()
    runs = {}
    for guided in (0.0, 1.0):
        runs[guided] = root / f"run-{guided}"
        train(from_dict(RunConfig, _tiny(120, guided)), data, runs[guided])
    torch.set_num_threads(threads)
    return data, runs


def _head_hits(run: Path, data: Path) -> float:
    """Share of linked target pieces of 200 training pairs whose most attended source piece in
    head 0 of the penultimate decoder layer is one they are linked to (teacher forcing)."""
    from nmt.checkpoint import load_run
    from nmt.data.store import ALIGN_COLUMN, load_prepared

    rows = load_prepared(data).split("train")[:200]
    batch = collate(rows["src_ids"], rows["tgt_ids"], list(range(200)), rows[ALIGN_COLUMN])
    model = load_run(run).model
    with torch.no_grad():
        _, attention = model(batch.src_ids, batch.src_mask, batch.tgt_in_ids, need_attention=True)
    top = attention[:, -2, 0].argmax(-1)  # (B, T)
    assert batch.alignment is not None
    hit = batch.alignment.gather(-1, top[..., None])[..., 0]
    return float(hit[batch.alignment.any(-1)].float().mean())


def test_guided_head_learns_the_links(aligned_runs: tuple[Path, dict[float, Path]]) -> None:
    data, runs = aligned_runs
    plain, guided = _head_hits(runs[0.0], data), _head_hits(runs[1.0], data)
    # Measured: 0.32 without guidance, 0.62 with it (chance is about 1 in 6 source pieces).
    assert guided > plain + 0.15, (plain, guided)


def test_translate_takes_alignments_from_the_supervised_head(
    aligned_runs: tuple[Path, dict[float, Path]], tmp_path: Path
) -> None:
    """--alignments-out of a guided run equals hard alignments made from head 0 of layer -2,
    even with the attention export set to average the last layer."""
    from typer.testing import CliRunner

    from nmt.cli import app
    from nmt.decoding.alignment import format_pharaoh, hard_alignment, make_record, read_attention

    _, runs = aligned_runs
    src = tmp_path / "in.de"
    rng = random.Random(5)
    words = [f"{c}{d}" for c in "bcdfghkl" for d in "aeo"]
    lines = [" ".join(rng.choice(words) for _ in range(rng.randint(3, 8))) for _ in range(12)]
    src.write_text("\n".join(lines) + "\n", encoding="utf-8")
    args = ["translate", str(runs[1.0]), "-i", str(src), "-o", str(tmp_path / "out.en"),
            "--alignments-out", str(tmp_path / "out.align"),
            "--attention-out", str(tmp_path / "attn.npz"),
            "--set", "decode.attention_layer=all",
            "--set", "decode.attention_head=all"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    written = (tmp_path / "out.align").read_text(encoding="utf-8").splitlines()
    _, records = read_attention(tmp_path / "attn.npz")
    averaged = 0  # lines where averaging every layer and head would have linked otherwise
    for line, record in zip(written, records, strict=True):
        layers = record.matrix.transpose(2, 0, 1, 3)  # (T, L, H, S): all were exported
        pieces = (record.src_pieces, record.tgt_pieces)
        head = make_record(0, *pieces, layers, "-2", "0").word_matrix
        assert line == format_pharaoh(hard_alignment(head))
        mean = make_record(0, *pieces, layers, "mean", "mean").word_matrix
        averaged += line != format_pharaoh(hard_alignment(mean))
    assert averaged > 0  # so the check above can tell the two apart
