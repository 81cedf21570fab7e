"""`nmt import` (nmt/pretrained.py) checked against the reference implementation: a tiny
MarianMTModel built here with `transformers` (SentencePiece models trained on a corpus the test
writes, 300 Adam steps so that outputs end on their own, save_pretrained), imported, and
compared on 100 sentences: teacher-forced log-probabilities and cross-attention, greedy and beam
outputs, a multi-target model's >>xx<< tokens. Then what an imported run is used for: translate
without transformers, fine-tuning with --init, CTranslate2 export; and one-line refusals."""

from __future__ import annotations

import io
import json
import os
import random
import shutil
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from export_support import export_and_compare
from typer.testing import CliRunner

from nmt.cli import app
from nmt.decoding.forced import force_corpus
from nmt.inference import Translator

transformers = pytest.importorskip("transformers")
spm = pytest.importorskip("sentencepiece")

WORDS = [f"{c}{v}" for c in "bcdfghkl" for v in "aeo"]
CODES = (">>fr<<", ">>es<<")
MAX_LENGTH = 40  # generate's max_length (the start token counted)


def pairs(count: int, seed: int, codes: tuple[str, ...] = ()) -> tuple[list[str], list[str]]:
    """1-8 random words; the target is them reversed and upper-cased (with >>es<< in their
    order). A few sources hold a character no SentencePiece model saw (an unknown piece)."""
    rng = random.Random(seed)
    src, tgt = [], []
    for n in range(count):
        words = [rng.choice(WORDS) for _ in range(rng.randint(1, 8))]
        code = rng.choice(codes) if codes else ""
        if n % 10 == 3:
            words.insert(rng.randint(0, len(words)), "жba")
        out = words if code == ">>es<<" else words[::-1]
        src.append(f"{code} {' '.join(words)}".strip())
        tgt.append(" ".join(out).upper())
    return src, tgt


def train_spm(lines: list[str]) -> bytes:
    """A unigram model with SentencePiece's own special ids, as Marian's source/target.spm."""
    buffer = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=buffer, vocab_size=40, num_threads=1,
        character_coverage=1.0, hard_vocab_limit=False, minloglevel=2,
    )  # fmt: skip
    return buffer.getvalue()


def build_marian(folder: Path, codes: tuple[str, ...] = (), steps: int = 300) -> tuple[Any, Any]:
    """Write a MarianMT folder as save_pretrained does and return (model, tokenizer).

    vocab.json is laid out as Marian's: </s> 0, <unk> 1, language tokens, the pieces of both
    SentencePiece models, <pad> last. Every LayerNorm and bias starts random and
    final_logits_bias stays random (training leaves that buffer alone), so a tensor mapped to
    the wrong place cannot go unnoticed."""
    from transformers import GenerationConfig, MarianConfig, MarianMTModel, MarianTokenizer

    folder.mkdir(parents=True)
    src_lines, tgt_lines = pairs(384, 1, codes)
    plain = [line.split("<< ", 1)[-1].replace("ж", "") for line in src_lines]
    sides = {"source.spm": train_spm(plain), "target.spm": train_spm(tgt_lines)}
    vocab = {"</s>": 0, "<unk>": 1, **{code: 2 + i for i, code in enumerate(codes)}}
    for name, model_bytes in sides.items():
        (folder / name).write_bytes(model_bytes)
        proc = spm.SentencePieceProcessor(model_proto=model_bytes)
        for i in range(proc.get_piece_size()):
            if not (proc.is_control(i) or proc.is_unknown(i)):
                vocab.setdefault(proc.id_to_piece(i), len(vocab))
    pad = vocab["<pad>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Recommended: pip install sacremoses."
        files = [str(folder / name) for name in ("source.spm", "target.spm", "vocab.json")]
        tok = MarianTokenizer(*files, source_lang="de", target_lang="en")
    tok.save_pretrained(folder)
    cfg = MarianConfig(
        vocab_size=len(vocab), d_model=32, encoder_layers=2, decoder_layers=2,
        encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=64,
        decoder_ffn_dim=64, max_position_embeddings=64, activation_function="swish",
        scale_embedding=True, pad_token_id=pad, decoder_start_token_id=pad, eos_token_id=0,
        forced_eos_token_id=0, dropout=0.0,
    )  # fmt: skip
    torch.manual_seed(0)
    model = MarianMTModel(cfg)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "layer_norm" in name or name.endswith("bias"):
                param.normal_(1.0 if "norm.weight" in name else 0.0, 0.2)
        model.final_logits_bias.normal_(0.0, 0.5)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    batches = []
    for start in range(0, len(src_lines), 64):
        batch = tok(src_lines[start : start + 64], text_target=tgt_lines[start : start + 64],
                    return_tensors="pt", padding=True)  # fmt: skip
        batch["labels"][batch["labels"] == pad] = -100
        batches.append(dict(batch))
    for step in range(steps):
        loss = model(**batches[step % len(batches)]).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    model.generation_config = GenerationConfig(
        num_beams=4, max_length=MAX_LENGTH, bad_words_ids=[[pad]], decoder_start_token_id=pad,
        eos_token_id=0, pad_token_id=pad, forced_eos_token_id=0,
    )  # fmt: skip
    model.save_pretrained(folder)
    return model, tok


def invoke(*args: object) -> Any:
    result = CliRunner().invoke(app, [str(a) for a in args])
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Any:
    """Tiny models on a shared machine: more threads only add contention (20x slower here)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def marian(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any, Any]:
    folder = tmp_path_factory.mktemp("marian") / "opus-mt-de-en"
    model, tok = build_marian(folder)
    model.set_attn_implementation("eager")  # so that output_attentions returns the weights
    return folder, model, tok


@pytest.fixture(scope="module")
def imported(marian: tuple[Path, Any, Any], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("imported") / "run"
    result = invoke("import", marian[0], "--out", out)
    assert result.exit_code == 0, result.output
    return out


def hf_outputs(model: Any, tok: Any, lines: list[str], **settings: Any) -> list[list[str]]:
    """transformers' generate with the model's generation defaults (and `settings`): the output
    pieces of each line, without the start token, padding and the final </s>."""
    batch = tok(lines, return_tensors="pt", padding=True)
    with torch.no_grad():
        out = model.generate(**batch, **settings)
    pad, eos = model.config.pad_token_id, model.config.eos_token_id
    rows = []
    for row in out.tolist():
        ids = [i for i in row[1:] if i != pad]
        rows.append(tok.convert_ids_to_tokens(ids[:-1] if ids and ids[-1] == eos else ids))
    return rows


def our_outputs(run: Path, lines: list[str], **settings: Any) -> tuple[list[list[str]], Any]:
    translator = Translator.load(run, "cpu", **settings)
    results = translator.translate_full(lines)
    return [r.tokens[:-1] for r in results], results


# ---- exactness -------------------------------------------------------------------------------


def test_teacher_forced_log_probs_and_cross_attention_equal_transformers(
    marian: tuple[Path, Any, Any], imported: Path
) -> None:
    _, model, tok = marian
    sources, targets = pairs(100, 7)
    batch = tok(sources, text_target=targets, return_tensors="pt", padding=True)
    labels = batch.pop("labels")
    pad = model.config.pad_token_id
    start = torch.full((len(sources), 1), pad)
    with torch.no_grad():
        out = model(**batch, decoder_input_ids=torch.cat([start, labels[:, :-1]], dim=1),
                    output_attentions=True)  # fmt: skip
    theirs = torch.log_softmax(out.logits, dim=-1).gather(-1, labels[:, :, None])[:, :, 0]
    cross = torch.stack(out.cross_attentions, dim=1)  # (B, L, H, T, S)

    translator = Translator.load(imported, "cpu")
    src_ids = translator.encode(sources, 0, "test")
    tgt_ids = [translator.tgt_tok.encode(t) for t in targets]
    # The tokenizer: the same pieces, </s> appended on both sides by transformers.
    for n in range(len(sources)):
        real = batch["input_ids"][n][batch["attention_mask"][n].bool()].tolist()
        assert tok.convert_ids_to_tokens(real) == translator.src_tok.pieces(src_ids[n]) + ["</s>"]
        gold = [i for i in labels[n].tolist() if i != pad]
        assert tok.convert_ids_to_tokens(gold) == translator.tgt_tok.pieces(tgt_ids[n]) + ["</s>"]
    assert sum("<unk>" in translator.src_tok.pieces(ids) for ids in src_ids) == 10
    hyps = force_corpus(translator.models, src_ids, tgt_ids, translator.cfg, "cpu", True)
    for n, hyp in enumerate(hyps):
        steps, length = len(tgt_ids[n]) + 1, len(src_ids[n]) + 1
        torch.testing.assert_close(
            torch.tensor(hyp.token_scores), theirs[n, :steps], atol=1e-4, rtol=0
        )
        assert hyp.attention is not None  # (T, L, H, S)
        expected = cross[n, :, :, :steps, :length].permute(2, 0, 1, 3)
        torch.testing.assert_close(hyp.attention, expected, atol=1e-5, rtol=0)


def test_greedy_outputs_and_texts_are_identical(
    marian: tuple[Path, Any, Any], imported: Path
) -> None:
    _, model, tok = marian
    sources, _ = pairs(100, 8)
    theirs = hf_outputs(model, tok, sources, num_beams=1)
    ours, results = our_outputs(imported, sources, beam_size=1)
    assert ours == theirs
    assert sum(len(t) for t in theirs) > 200  # not a model that stops at once
    batch = tok(sources, return_tensors="pt", padding=True)
    with torch.no_grad():
        ids = model.generate(**batch, num_beams=1)
    texts = tok.batch_decode(ids, skip_special_tokens=True)
    assert [r.translation for r in results] == texts


def test_beam_outputs_with_the_imported_settings(
    marian: tuple[Path, Any, Any], imported: Path
) -> None:
    """The generation defaults (num_beams 4, max_length 40, bad_words_ids [[<pad>]]) became the
    run's decode settings. At least 98 of 100 outputs agree, and every line that differs does so
    for one of the two reasons the README gives ("Pretrained models"): transformers' search went
    on after four hypotheses had ended (early_stopping=False) and found one that scores better,
    or its output reached max_length, where the EOS it forces costs nothing."""
    _, model, tok = marian
    decode = Translator.load(imported, "cpu").cfg
    assert (decode.beam_size, decode.max_len_a, decode.max_len_b) == (4, 0.0, MAX_LENGTH - 2)
    sources, _ = pairs(100, 9)
    theirs = hf_outputs(model, tok, sources)
    ours, results = our_outputs(imported, sources)
    differ = [n for n in range(len(sources)) if ours[n] != theirs[n]]
    assert len(differ) <= 2, differ
    stopping = hf_outputs(model, tok, sources, early_stopping=True)
    translator = Translator.load(imported, "cpu")
    vocab = translator.tgt_tok.pieces(range(translator.tgt_tok.vocab_size))
    for n in differ:
        if len(theirs[n]) == MAX_LENGTH - 2:
            continue  # the free EOS at max_length
        found = force_corpus(translator.models, [translator.encode([sources[n]], 0, "")[0]],
                             [[vocab.index(p) for p in theirs[n]]], decode, "cpu")  # fmt: skip
        assert stopping[n] == ours[n] and found[0].score > results[n].score, n


def test_renormalized_generation_is_imported_as_a_pad_logit_without_probability(
    marian: tuple[Path, Any, Any], tmp_path: Path
) -> None:
    """generation_config renormalize_logits: transformers renormalises after banning <pad>; the
    import gives <pad> no probability instead, which is the same, so the outputs and their
    scores agree. Renormalised, the EOS that transformers forces at max_length costs nothing
    (log-prob 0), where nmt counts its log-probability: a line may differ only where
    transformers' output reaches that length."""
    folder, model, tok = marian
    copy = tmp_path / "renormalized"
    shutil.copytree(folder, copy)
    generation = json.loads((copy / "generation_config.json").read_text())
    generation["renormalize_logits"] = True
    (copy / "generation_config.json").write_text(json.dumps(generation))
    assert invoke("import", copy, "--out", tmp_path / "run").exit_code == 0
    sources, _ = pairs(30, 10)
    batch = tok(sources, return_tensors="pt", padding=True)
    with torch.no_grad():
        out = model.generate(**batch, early_stopping=True, renormalize_logits=True,
                             output_scores=True, return_dict_in_generate=True)  # fmt: skip
    ours, results = our_outputs(tmp_path / "run", sources)
    theirs = hf_outputs(model, tok, sources, early_stopping=True, renormalize_logits=True)
    same = [n for n in range(len(sources)) if ours[n] == theirs[n]]
    assert len(same) >= 28
    assert all(len(theirs[n]) == MAX_LENGTH - 2 for n in range(len(sources)) if n not in same)
    scores = torch.tensor([results[n].score for n in same])
    torch.testing.assert_close(scores, out.sequences_scores[same], atol=1e-4, rtol=0)


def test_an_older_save_imports_alike(
    marian: tuple[Path, Any, Any], imported: Path, tmp_path: Path
) -> None:
    """As older transformers versions saved OPUS-MT models: pytorch_model.bin with every name of
    the shared embedding table and both position tables, and a config.json with the BART-era
    keys and the generation defaults in it (no generation_config.json). The import gives the
    same weights and decode settings as from the new-style folder."""
    from safetensors.torch import load_file

    folder, model, _ = marian
    old = tmp_path / "opus-mt-de-en"
    shutil.copytree(folder, old)
    (old / "generation_config.json").unlink()
    state = load_file(str(old / "model.safetensors"))
    (old / "model.safetensors").unlink()
    for name in ("model.encoder.embed_tokens.weight", "model.decoder.embed_tokens.weight",
                 "lm_head.weight"):  # fmt: skip
        state[name] = state["model.shared.weight"]
    for stack in ("encoder", "decoder"):
        positions = getattr(model.model, stack).embed_positions
        state[f"model.{stack}.embed_positions.weight"] = positions.create_weight()
    torch.save(state, old / "pytorch_model.bin")
    config = json.loads((old / "config.json").read_text(encoding="utf-8"))
    pad = config["pad_token_id"]
    config.update({"add_bias_logits": False, "add_final_layer_norm": False,
                   "normalize_before": False, "normalize_embedding": False,
                   "static_position_embeddings": True, "id2label": {"0": "LABEL_0"},
                   "num_beams": 4, "max_length": MAX_LENGTH, "bad_words_ids": [[pad]],
                   "torch_dtype": "float32", "output_past": True})  # fmt: skip
    (old / "config.json").write_text(json.dumps(config), encoding="utf-8")
    result = invoke("import", old, "--out", tmp_path / "run")
    assert result.exit_code == 0, result.output
    ours = torch.load(tmp_path / "run" / "best.pt", weights_only=True)
    new = torch.load(imported / "best.pt", weights_only=True)
    assert ours["config"] == new["config"]
    assert all(torch.equal(ours["model"][k], new["model"][k]) for k in new["model"])


def test_a_multi_target_model_keeps_language_tokens_whole(tmp_path: Path) -> None:
    folder = tmp_path / "opus-mt-de-ROMANCE"
    model, tok = build_marian(folder, codes=CODES, steps=150)
    result = invoke("import", folder, "--out", tmp_path / "run")
    assert result.exit_code == 0, result.output
    assert "target-language tokens (start each line with one): >>fr<< >>es<<" in result.output
    sources, _ = pairs(40, 11, CODES)
    translator = Translator.load(tmp_path / "run", "cpu")
    for line, ids in zip(sources, translator.encode(sources, 0, "test"), strict=True):
        pieces = translator.src_tok.pieces(ids)
        assert pieces[0] == line.split()[0] and pieces[0] in CODES
        ids = tok(line)["input_ids"]
        assert tok.convert_ids_to_tokens(ids) == pieces + ["</s>"]
    assert our_outputs(tmp_path / "run", sources, beam_size=1)[0] == hf_outputs(
        model, tok, sources, num_beams=1
    )


# ---- using an imported run ------------------------------------------------------------------


def test_translate_of_an_imported_run_never_imports_transformers(
    imported: Path, tmp_path: Path
) -> None:
    sources, _ = pairs(5, 12)
    (tmp_path / "in.de").write_text("\n".join(sources) + "\n", encoding="utf-8")
    code = (
        "import sys\n"
        "from nmt.cli import app\n"
        f"args = ['translate', {str(imported)!r}, '-i', {str(tmp_path / 'in.de')!r}, "
        f"'-o', {str(tmp_path / 'out.en')!r}]\n"
        "try:\n    app(args)\nexcept SystemExit as done:\n    assert not done.code, done.code\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'transformers'))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)  # fmt: skip
    assert done.stdout.strip().splitlines()[-1] == "[]"
    expected = Translator.load(imported, "cpu").translate(sources)
    assert (tmp_path / "out.en").read_text(encoding="utf-8").splitlines() == expected


def test_fine_tuning_an_imported_model_runs_and_translates(imported: Path, tmp_path: Path) -> None:
    """nmt prepare with the imported vocabulary (--set spm_model=RUN/spm.model), train --init,
    translate: the weights move, the fixed output bias does not."""
    sources, targets = pairs(120, 13)
    for name, lines in (("train.de", sources[:100]), ("train.en", targets[:100]),
                        ("valid.de", sources[100:]), ("valid.en", targets[100:])):  # fmt: skip
        (tmp_path / name).write_text("\n".join(lines) + "\n", encoding="utf-8")
    vocabulary = f"spm_model={imported}/spm.model"
    prepared = invoke("prepare", "--src-lang", "de", "--tgt-lang", "en",
                      "--train", tmp_path / "train", "--valid", tmp_path / "valid",
                      "--out", tmp_path / "prepared", "--set", vocabulary)  # fmt: skip
    assert prepared.exit_code == 0, prepared.output
    tuned = tmp_path / "tuned"
    trained = invoke("train", "--init", imported, "--data", tmp_path / "prepared", "--out", tuned,
                     "--set", "train.max_steps=6", "--set", "train.lr=1e-3",
                     "--set", "train.warmup_steps=1", "--set", "train.valid_every=6",
                     "--set", "train.save_every=6", "--set", "train.valid_metric=loss",
                     "--set", "train.batch_tokens=400", "--set", "train.num_threads=1")  # fmt: skip
    assert trained.exit_code == 0, trained.output
    before = torch.load(imported / "best.pt", weights_only=True)["model"]
    after = torch.load(tuned / "last.pt", weights_only=True)["model"]
    assert not torch.equal(before["encoder_layers.0.ffn.fc1.weight"],
                           after["encoder_layers.0.ffn.fc1.weight"])  # fmt: skip
    assert torch.equal(before["logits_bias"], after["logits_bias"])
    translated = invoke("translate", tuned, "-i", tmp_path / "valid.de", "-o", tmp_path / "hyp")
    assert translated.exit_code == 0, translated.output
    assert len((tmp_path / "hyp").read_text(encoding="utf-8").splitlines()) == 20


def test_ctranslate2_export_of_an_imported_model_decodes_like_nmt(
    imported: Path, tmp_path: Path
) -> None:
    """The export test's rule (tests/test_export.py): CTranslate2 with the settings of
    nmt-decoding.json gives the same 1-best as nmt on at least 98 of 100 sentences, and scores
    every token of a translation as nmt does."""
    ctranslate2 = pytest.importorskip("ctranslate2")
    out = tmp_path / "ct2"
    sources, _ = pairs(100, 14)
    same, _ = export_and_compare(imported, out, sources)
    assert same >= 98, same
    ours = Translator.load(imported, "cpu")
    src_ids = ours.encode(sources[:10], 0, "test")
    hyps = [n[0] for n in ours.decode(src_ids)]
    engine = ctranslate2.Translator(str(out), device="cpu", inter_threads=1, intra_threads=1)
    scored = engine.score_batch([ours.src_tok.pieces(ids) for ids in src_ids],
                                [ours.tgt_tok.pieces(h.tokens) for h in hyps])  # fmt: skip
    for result, hyp in zip(scored, hyps, strict=True):
        torch.testing.assert_close(torch.tensor(result.log_probs),
                                   torch.tensor(hyp.token_scores), atol=2e-4, rtol=0)  # fmt: skip


# ---- what is refused ---------------------------------------------------------------------------


def edited_copy(folder: Path, into: Path, name: str, change: dict[str, Any]) -> Path:
    copy = into / "opus-mt-de-en"
    shutil.copytree(folder, copy)
    data = json.loads((copy / name).read_text(encoding="utf-8"))
    (copy / name).write_text(json.dumps({**data, **change}), encoding="utf-8")
    return copy


@pytest.mark.parametrize(
    "name,change,message",
    [
        ("config.json", {"model_type": "bart"}, "config field 'model_type' = \"bart\""),
        ("config.json", {"architectures": ["MarianForCausalLM"]}, "'architectures'"),
        ("config.json", {"activation_function": "gelu_new"}, "'activation_function'"),
        ("config.json", {"normalize_before": True}, "'normalize_before' = true"),
        ("config.json", {"share_encoder_decoder_embeddings": False},
         "'share_encoder_decoder_embeddings' = false"),
        ("config.json", {"rope_theta": 10000.0}, "'rope_theta' = 10000.0: is not a MarianMT"),
        ("generation_config.json", {"repetition_penalty": 1.2}, "'repetition_penalty' = 1.2"),
        ("generation_config.json", {"bad_words_ids": [[5]]}, "'bad_words_ids' = [[5]]"),
        ("generation_config.json", {"do_sample": True}, "'do_sample' = true"),
        ("tokenizer_config.json", {"separate_vocabs": True}, "separate_vocabs true"),
    ],
)  # fmt: skip
def test_unsupported_settings_are_refused_in_one_line_before_writing(
    marian: tuple[Path, Any, Any], tmp_path: Path, name: str, change: dict, message: str
) -> None:
    copy = edited_copy(marian[0], tmp_path, name, change)
    result = invoke("import", copy, "--out", tmp_path / "run")
    assert result.exit_code == 2, result.output
    assert result.stderr.count("\n") == 1 and message in result.stderr, result.stderr
    assert not (tmp_path / "run").exists()


def test_missing_files_and_foreign_tensors_are_refused_by_name(
    marian: tuple[Path, Any, Any], tmp_path: Path
) -> None:
    from safetensors.torch import load_file, save_file

    copy = tmp_path / "copy"
    shutil.copytree(marian[0], copy)
    (copy / "vocab.json").unlink()
    missing = invoke("import", copy, "--out", tmp_path / "run")
    assert missing.exit_code == 1 and f"{copy / 'vocab.json'}: missing" in missing.stderr
    shutil.copy(marian[0] / "vocab.json", copy / "vocab.json")
    state = load_file(str(copy / "model.safetensors"))
    save_file({**state, "model.encoder.layernorm_embedding.weight": torch.ones(32)},
              str(copy / "model.safetensors"))  # fmt: skip
    foreign = invoke("import", copy, "--out", tmp_path / "run")
    assert foreign.exit_code == 1, foreign.output
    assert "model.encoder.layernorm_embedding.weight is not part of" in foreign.stderr
    assert foreign.stderr.count("\n") == 1 and not (tmp_path / "run").exists()
    untied = {**state, "lm_head.weight": state["model.shared.weight"] + 1}
    save_file(untied, str(copy / "model.safetensors"))
    refused = invoke("import", copy, "--out", tmp_path / "run")
    assert "lm_head.weight differs from model.shared.weight" in refused.stderr
    shifted = {**state, "model.encoder.embed_positions.weight": torch.zeros(64, 32)}
    save_file(shifted, str(copy / "model.safetensors"))
    refused = invoke("import", copy, "--out", tmp_path / "run")
    assert "embed_positions.weight is not the sinusoidal table" in refused.stderr
    assert not (tmp_path / "run").exists()


def test_a_hub_name_offline_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests never touch the network: with HF_HUB_OFFLINE (set for the whole suite) and an empty
    cache the download fails at once, in one line that says why and what to do instead."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    result = invoke("import", "hf:Helsinki-NLP/opus-mt-de-en", "--out", tmp_path / "run")
    assert result.exit_code == 1
    assert result.stderr.count("\n") == 1 and "cannot download" in result.stderr
    assert "nmt import PATH" in result.stderr and not (tmp_path / "run").exists()


@pytest.mark.parametrize("where", ["the source itself", "inside the source"])
def test_import_never_writes_into_the_model_it_reads(
    marian: tuple[Path, Any, Any], tmp_path: Path, where: str
) -> None:
    copy = tmp_path / "opus-mt-de-en"
    shutil.copytree(marian[0], copy)
    before = {p.name: p.read_bytes() for p in copy.iterdir()}
    out = copy if where == "the source itself" else copy / "run"
    result = invoke("import", copy, "--out", out)
    assert result.exit_code == 2, result.output
    verb = "is" if out == copy else "lies inside"
    assert result.stderr == f"error: --out {out}: {verb} {copy} (the model folder to import); " \
        "write the output elsewhere\n"  # fmt: skip
    assert {p.name: p.read_bytes() for p in copy.iterdir()} == before


# ---- the second hostile round: links into --out, damaged and impossible files, their names ------


def files_of(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.mark.parametrize("link", ["symlink", "hard link"])
def test_a_source_file_that_leads_into_out_is_refused(
    marian: tuple[Path, Any, Any], tmp_path: Path, link: str
) -> None:
    """Re-importing into an earlier import's folder, a source file that is a link to a file
    there (import.json) would be replaced by the import it feeds: refused before any work."""
    out = tmp_path / "run"
    assert invoke("import", marian[0], "--out", out).exit_code == 0
    copy = tmp_path / "source"
    shutil.copytree(marian[0], copy)
    (copy / "generation_config.json").unlink()
    if link == "symlink":
        (copy / "generation_config.json").symlink_to(out / "import.json")
        needle = f"{copy / 'generation_config.json'} (the model folder to import) is a link"
    else:
        (copy / "generation_config.json").hardlink_to(out / "import.json")
        needle = f"holds a hard link of a file in {copy} (the model folder to import)"
    before = files_of(out)
    result = invoke("import", copy, "--out", out)
    assert result.exit_code == 2, result.output
    assert result.stderr.count("\n") == 1 and f"--out {out}: " in result.stderr, result.stderr
    assert needle in result.stderr
    assert files_of(out) == before


@pytest.mark.parametrize("name", ["import.json", ".nmt-output.json"])
def test_the_records_of_an_imported_run_are_kept(imported: Path, tmp_path: Path, name: str) -> None:
    src = tmp_path / "in.de"
    src.write_text("ba ce\n", encoding="utf-8")
    before = files_of(imported)
    result = invoke("translate", imported, "-i", src, "-o", imported / name)
    assert result.exit_code == 2, result.output
    assert result.stderr == (f"error: -o {imported / name}: is also a file of the run folder "
                             f"{imported}; write the output to another file\n")  # fmt: skip
    assert files_of(imported) == before


def edited_weights(folder: Path, into: Path, change: Any) -> Path:
    from safetensors.torch import load_file, save_file

    copy = into / "source"
    shutil.copytree(folder, copy)
    state = load_file(str(copy / "model.safetensors"))
    change(state)
    save_file(state, str(copy / "model.safetensors"))
    return copy


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_weights_that_are_not_finite_are_refused(
    marian: tuple[Path, Any, Any], tmp_path: Path, value: float
) -> None:
    copy = edited_weights(marian[0], tmp_path, lambda s: s["model.shared.weight"].__setitem__(
        (3, 4), value))  # fmt: skip
    result = invoke("import", copy, "--out", tmp_path / "run")
    assert result.exit_code == 1, result.output
    assert result.stderr == (f"error: {copy / 'model.safetensors'}: model.shared.weight holds NaN "
                             "or infinite values; the model is damaged\n")  # fmt: skip
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "change,message",
    [
        ({"max_length": 2}, "field 'max_length' = 2: leaves no room for a word: generate counts "
         "the start token and </s> in it"),
        ({"max_length": -5}, "field 'max_length' = -5: leaves no room for a word"),
        ({"max_new_tokens": 1}, "field 'max_new_tokens' = 1: leaves no room for a word: generate "
         "counts </s> in it"),
        ({"max_new_tokens": 0}, "field 'max_new_tokens' = 0: leaves no room"),
        ({"min_length": 1000}, f"field 'min_length' = 1000: asks for more tokens than the "
         f"{MAX_LENGTH - 2} at most that max_length and the model allow"),
        # Scores beyond float32 would be ranked as infinities (and written as such).
        ({"length_penalty": -1e308}, "settings: decode.len_penalty must be in [-10, 10], got "
         "-1e+308"),
        ({"max_length": 1e400}, "field 'max_length' = Infinity: expected an integer"),
        ({"num_beams": 0}, "field 'num_beams' = 0: expected 1 or more"),
        ({"num_return_sequences": 5}, "field 'num_return_sequences' = 5: expected 1 to num_beams"),
    ],
)  # fmt: skip
def test_impossible_generation_limits_are_refused(
    marian: tuple[Path, Any, Any], tmp_path: Path, change: dict, message: str
) -> None:
    copy = edited_copy(marian[0], tmp_path, "generation_config.json", change)
    result = invoke("import", copy, "--out", tmp_path / "run")
    assert result.exit_code == 2, result.output
    where = copy / "generation_config.json"
    assert result.stderr.startswith(f"error: {where}: generation {message}"), result.stderr
    assert result.stderr.count("\n") == 1 and not (tmp_path / "run").exists()


def test_a_two_word_limit_is_still_imported(marian: tuple[Path, Any, Any], tmp_path: Path) -> None:
    copy = edited_copy(marian[0], tmp_path, "generation_config.json", {"max_length": 3})
    assert invoke("import", copy, "--out", tmp_path / "run").exit_code == 0
    run = Translator.load(tmp_path / "run")
    assert run.cfg.max_len_a == 0 and run.cfg.max_len_b == 1


def damage(folder: Path, name: str, how: str) -> None:
    path = folder / name
    if path.exists():
        path.unlink()
    if how == "folder":
        path.mkdir()
    elif how == "fifo":
        os.mkfifo(path)
    elif how == "deep":
        path.write_text("[" * 100_000, encoding="utf-8")
    else:  # random bytes
        path.write_bytes(random.Random(0).randbytes(4096))


@pytest.mark.parametrize(
    "name,how,code,message",
    [
        ("config.json", "folder", 1, "config.json: is a folder, not a file"),
        ("vocab.json", "fifo", 1, "vocab.json: not a regular file (a pipe or device); save it"),
        ("source.spm", "folder", 1, "source.spm: is a folder, not a file"),
        ("generation_config.json", "folder", 1, "generation_config.json: is a folder, not a file"),
        ("model.safetensors", "folder", 1, "model.safetensors: is a folder, not a file"),
        ("vocab.json", "deep", 1, "vocab.json: not valid JSON (nested too deeply)"),
        ("config.json", "deep", 1, "config.json: not valid JSON (nested too deeply)"),
        ("target.spm", "bytes", 1, "target.spm: not a SentencePiece model (it does not parse as "
         "one)"),
        ("pytorch_model.bin", "bytes", 1, "pytorch_model.bin: not a readable weights file (not a "
         "file written by torch.save)"),
    ],
)  # fmt: skip
def test_damaged_or_misplaced_files_are_named_as_they_are(
    marian: tuple[Path, Any, Any], tmp_path: Path, name: str, how: str, code: int, message: str
) -> None:
    copy = tmp_path / "source"
    shutil.copytree(marian[0], copy)
    if name == "pytorch_model.bin":
        (copy / "model.safetensors").unlink()
    damage(copy, name, how)
    result = invoke("import", copy, "--out", tmp_path / "run")
    assert result.exit_code == code, result.output
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith(f"error: {copy}/{message}"), result.stderr
    assert not (tmp_path / "run").exists()


def test_a_file_given_as_the_model_folder_is_named_a_file(tmp_path: Path) -> None:
    (tmp_path / "in.de").write_text("ba\n", encoding="utf-8")
    result = invoke("import", tmp_path / "in.de", "--out", tmp_path / "run")
    assert result.exit_code == 1
    assert result.stderr.startswith(f"error: {tmp_path / 'in.de'}: is a file, not a folder; ")
