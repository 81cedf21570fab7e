"""`nmt export`: a trained Transformer as a CTranslate2 model folder, with the run's SentencePiece
models and the decoding settings that decode like the run beside it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from nmt.checkpoint import guard_outputs, load_for_inference
from nmt.errors import ConfigError
from nmt.io import Output, atomic_dir, output_problem, write_json
from nmt.models.ctranslate2 import DECODING_FILE, transformer_spec, translate_options
from nmt.models.transformer import TransformerModel
from nmt.outputs import log_stderr, model_inputs

# CTranslate2 weight types (`--quantization`); None keeps float32.
CT2_QUANTIZATIONS = ("int8", "int8_float32", "int8_float16", "int8_bfloat16", "int16", "float16",
                     "bfloat16", "float32")  # fmt: skip
EXPORT_KIND = "export"  # the command an exported model folder's output marker names


def export(
    checkpoint: Path,
    out: Path,
    fmt: str,
    quantization: str | None,
    log: Callable[[str], None] | None = None,
) -> Path:
    """`nmt export`: a trained Transformer as a CTranslate2 model directory `out` (model.bin,
    config.json, vocabularies) with the run's SentencePiece models beside it as source.spm and
    target.spm. Written under a temp name and renamed, so `out` is never half-written; an existing
    `out` is replaced only when an earlier `nmt export` wrote it, and never when it holds
    `checkpoint`."""
    if fmt != "ctranslate2":
        raise ConfigError(f"--format {fmt!r}: the only export format is ctranslate2")
    if quantization is not None and quantization not in CT2_QUANTIZATIONS:
        raise ConfigError(
            f"--quantization {quantization!r}: expected one of {', '.join(CT2_QUANTIZATIONS)}"
        )
    guard_outputs([Output("--out", Path(out), "folder")], model_inputs([checkpoint]), ConfigError)
    problem = output_problem(out, EXPORT_KIND)
    if problem:
        raise ConfigError(problem)
    model, cfg, src_tok, tgt_tok = load_for_inference(checkpoint, "cpu")
    if not isinstance(model, TransformerModel):
        raise ConfigError(
            f"{checkpoint}: model.arch is {cfg.model.arch}; CTranslate2 export takes "
            "Transformers only"
        )
    src_pieces = src_tok.pieces(range(src_tok.vocab_size))
    tgt_pieces = tgt_tok.pieces(range(tgt_tok.vocab_size))
    spec = transformer_spec(model, cfg.model.transformer, src_pieces, tgt_pieces)
    spec.optimize(quantization=quantization)
    with atomic_dir(out, EXPORT_KIND, [checkpoint], refused=ConfigError) as tmp:
        spec.save(str(tmp))
        (tmp / "source.spm").write_bytes(src_tok.spm_bytes)
        (tmp / "target.spm").write_bytes(tgt_tok.spm_bytes)
        options = translate_options(cfg.decode)
        write_json(tmp / DECODING_FILE, options)
    for difference in options["differences"]:
        (log or log_stderr)(f"note: CTranslate2 will decode differently: {difference}")
    return out
