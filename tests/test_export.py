"""`nmt export --format ctranslate2`: CTranslate2 running the exported weights scores every target
token as our model does, for every Transformer variant, and translates like `nmt translate`."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from export_support import export_and_compare
from tiny import random_model
from torch import nn
from typer.testing import CliRunner

from nmt.cli import app
from nmt.config import EOS_ID, TransformerConfig, from_dict
from nmt.models.ctranslate2 import transformer_spec

ctranslate2 = pytest.importorskip("ctranslate2")

PIECES = ["<pad>", "<unk>", "<s>", "</s>"] + [f"w{i}" for i in range(20)]


def random_transformer(**settings: object) -> tuple[nn.Module, TransformerConfig]:
    """A tiny Transformer whose every weight is random, LayerNorms and biases included, so that
    a sublayer mapped to the wrong place cannot go unnoticed."""
    model = random_model("transformer", len(PIECES), ffn_dim=24, max_positions=40, **settings)
    cfg = model.cfg
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.LayerNorm):
                module.weight.normal_(1.0, 0.2)
                module.bias.normal_(0.0, 0.2)
            elif isinstance(module, nn.Linear) and module.bias is not None:
                module.bias.normal_(0.0, 0.2)
        if model.learned_positions is not None:
            model.learned_positions.weight.normal_(0.0, 0.5)
        if model.logits_bias is not None:
            model.logits_bias.normal_(0.0, 1.0)
    return model, cfg.transformer


def our_token_log_probs(model: nn.Module, src: list[int], tgt: list[int]) -> torch.Tensor:
    """Teacher-forced log-probabilities of tgt + EOS given src + EOS, from our model."""
    src_ids = torch.tensor([src + [EOS_ID]])
    tgt_in = torch.tensor([[2] + tgt])
    with torch.no_grad():
        logits = model(src_ids, torch.ones_like(src_ids, dtype=torch.bool), tgt_in)
    log_probs = torch.log_softmax(logits.float(), dim=-1)[0]
    return log_probs.gather(1, torch.tensor(tgt + [EOS_ID])[:, None])[:, 0]


@pytest.mark.parametrize(
    "settings",
    [
        {},
        {"pre_norm": False},
        {"positions": "learned", "activation": "gelu"},
        {"pre_norm": False, "activation": "silu", "scale_embeddings": False, "output_bias": True},
    ],
    ids=["pre-norm", "post-norm", "learned-positions-gelu", "marian-options"],
)
def test_ctranslate2_scores_every_token_as_we_do(settings: dict, tmp_path: Path) -> None:
    model, cfg = random_transformer(**settings)
    spec = transformer_spec(model, cfg, PIECES, PIECES)
    spec.save(str(tmp_path))
    translator = ctranslate2.Translator(str(tmp_path), device="cpu", inter_threads=1)
    pairs = [([4, 9, 13, 7], [5, 6, 22]), ([17], [8, 8, 8, 11, 4, 19])]
    results = translator.score_batch(
        [[PIECES[i] for i in src] for src, _ in pairs],
        [[PIECES[i] for i in tgt] for _, tgt in pairs],
    )
    for (src, tgt), result in zip(pairs, results, strict=True):
        assert result.tokens == [PIECES[i] for i in tgt] + ["</s>"]
        theirs = torch.tensor(result.log_probs)
        torch.testing.assert_close(theirs, our_token_log_probs(model, src, tgt), atol=2e-4, rtol=0)


# ---- the command, on a trained model ---------------------------------------------------------


def test_exported_model_translates_like_nmt(tiny_transformer_run: Path, tmp_path: Path) -> None:
    from nmt.inference import Translator

    out = tmp_path / "ct2"
    result = CliRunner().invoke(app, ["export", str(tiny_transformer_run), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert {"model.bin", "config.json", "source.spm", "target.spm"} <= {
        p.name for p in out.iterdir()
    }
    ours = Translator.load(tiny_transformer_run, "cpu", beam_size=1)
    lines = ["ba ce do", "fo ge ha", "ke lo ba ce do fe"]
    src_ids = ours.encode(lines, 0, "test input")
    our_outputs = [nbest[0].tokens for nbest in ours.decode(src_ids)]

    translator = ctranslate2.Translator(str(out), device="cpu", inter_threads=1)
    pieces = [ours.src_tok.pieces(ids) for ids in src_ids]
    theirs = translator.translate_batch(pieces, beam_size=1, max_decoding_length=32)
    assert [r.hypotheses[0] for r in theirs] == [ours.tgt_tok.pieces(t) for t in our_outputs]
    assert all(len(tokens) > 0 for tokens in our_outputs)  # the model learned to say something


def random_sentences(count: int, seed: int) -> list[str]:
    """Sentences over the tiny corpus' words (tests/conftest.py), 2-8 words each."""
    import random

    rng = random.Random(seed)
    words = [f"{c}{d}" for c in "bcdfghkl" for d in "aeo"]
    return [" ".join(rng.choice(words) for _ in range(rng.randint(2, 8))) for _ in range(count)]


def test_export_decodes_like_nmt_with_the_default_beam(
    tiny_transformer_run: Path, tmp_path: Path
) -> None:
    """Default decode settings (beam 5, length ** 1 normalisation): at least 98 of 100 equal."""
    from nmt.config import DecodeConfig, to_dict

    run = tmp_path / "run"
    run.mkdir()
    for f in tiny_transformer_run.iterdir():
        if f.is_file():
            (run / f.name).write_bytes(f.read_bytes())
    payload = torch.load(run / "best.pt", weights_only=True)
    payload["config"]["decode"] = to_dict(DecodeConfig())  # a run trained with the defaults
    torch.save(payload, run / "best.pt")
    same, settings = export_and_compare(run, tmp_path / "ct2", random_sentences(100, seed=7))
    assert settings["differences"] == []
    assert settings["translate_batch"]["length_penalty"] == 1.0
    assert same >= 98, same


def test_export_names_the_settings_it_cannot_reproduce() -> None:
    from nmt.config import DecodeConfig
    from nmt.models.ctranslate2 import translate_options

    options = translate_options(
        DecodeConfig(length_norm="gnmt", len_penalty=0.6, min_len=2, coverage_penalty=0.2)
    )
    assert [d.split(":")[0] for d in options["differences"]] == [
        "decode.length_norm=gnmt",
        "decode.coverage_penalty=0.2",
        "decode.min_len=2",
    ]
    assert "coverage_penalty" not in options["translate_batch"]
    assert (
        translate_options(DecodeConfig(length_norm="none"))["translate_batch"]["length_penalty"]
        == 0.0
    )


def test_bad_requests_are_one_line_errors(
    tiny_transformer_run: Path, tmp_path: Path, monkeypatch
) -> None:
    runner = CliRunner()
    out = tmp_path / "ct2"
    bad_format = runner.invoke(
        app, ["export", str(tiny_transformer_run), "-o", str(out), "--format", "onnx"]
    )
    assert bad_format.exit_code == 2 and "only export format is ctranslate2" in bad_format.stderr
    bad_type = runner.invoke(
        app, ["export", str(tiny_transformer_run), "-o", str(out), "--quantization", "q3"]
    )
    assert bad_type.exit_code == 2 and "--quantization 'q3'" in bad_type.stderr
    monkeypatch.setitem(sys.modules, "ctranslate2", None)  # as if it were not installed
    missing = runner.invoke(app, ["export", str(tiny_transformer_run), "-o", str(out)])
    assert missing.exit_code == 2 and "pip install 'nmt[export]'" in missing.stderr
    assert not out.exists()  # nothing half-written


def test_an_rnn_run_is_refused_by_name(tiny_prepared: Path, tmp_path: Path) -> None:
    from nmt.config import RunConfig
    from nmt.training.loop import train

    cfg = from_dict(
        RunConfig,
        {
            "model": {"arch": "rnn", "rnn": {"emb_dim": 8, "hidden_size": 8, "attn_dim": 8}},
            "train": {"max_steps": 2, "batch_tokens": 300, "valid_every": 2, "save_every": 2,
                      "valid_metric": "loss", "num_threads": 1, "device": "cpu",
                      "precision": "fp32"},
        },
    )  # fmt: skip
    run = tmp_path / "rnn-run"
    train(cfg, tiny_prepared, run)
    out = tmp_path / "ct2"
    result = CliRunner().invoke(app, ["export", str(run), "-o", str(out)])
    assert result.exit_code == 2
    assert "model.arch is rnn; CTranslate2 export takes Transformers only" in result.stderr
    assert not out.exists()
