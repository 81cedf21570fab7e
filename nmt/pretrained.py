"""Pretrained models: `nmt import` turns a MarianMT model (Helsinki-NLP's OPUS-MT models, as
`transformers` saves them) into an nmt run folder, once; every command then uses it like a run
of its own (translate, evaluate, serve, train --init, export, `Translator`).

A source is `hf:OWNER/NAME[@REVISION]`, downloaded with huggingface_hub (only here, and only the
files read below), or a folder that `save_pretrained` wrote: config.json, generation_config.json
(optional), model.safetensors or pytorch_model.bin, source.spm, target.spm, vocab.json and
tokenizer_config.json (optional). Weights are read with safetensors or torch.load(weights_only=
True); no code from the source ever runs, and `transformers` is not needed.

How Marian maps onto our Transformer (nmt/models/transformer.py):
- post-norm layers without final norms (`pre_norm: false`), SiLU (Marian's "swish"), embeddings
  times sqrt(D) when `scale_embedding`, and our sinusoidal table, which is Marian's (sines in the
  first half, cosines in the second); a stored position table is checked against it;
- separate q/k/v projections become our fused ones (rows Q|K|V, K|V); layer norms: the
  self-attention's is norm1, the cross-attention's norm2, the feed-forward's the last;
- one embedding table for source, target and output (`tie_embeddings` over one vocabulary), and
  final_logits_bias as the fixed output bias (`output_bias`).

The vocabulary keeps Marian's pieces but moves its special tokens to nmt's ids: Marian's `<unk>`
and `</s>` become UNK and EOS, and its `<pad>`, the token Marian starts decoding from, becomes
nmt's start symbol BOS (piece `<s>`), so decoding starts where Marian's does. nmt's padding id
is one row more, which no text maps to; its logit gets a bias of -1e4, so it takes no
probability (exp(-1e4) is 0 in float32) and the other tokens' log-probabilities stay Marian's.
The tokenizer is `nmt.data.spm.MappedTokenizer`: source.spm and target.spm through vocab.json,
as MarianTokenizer cuts text (a leading `>>xx<<` stays one token). Generation defaults become the
run's decode settings (`decode_config`).

Everything is checked before anything is written: a field, file, tensor or setting that the
import does not support is refused in one line that names it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from nmt import __version__
from nmt import checkpoint as ckpt
from nmt.config import (
    BOS_ID,
    EOS_ID,
    LANG_CODE,
    PAD_ID,
    UNK_ID,
    DecodeConfig,
    ModelConfig,
    PrepareConfig,
    RunConfig,
    TransformerConfig,
    dump_yaml,
    from_dict,
    to_dict,
)
from nmt.data.spm import SPECIAL_PIECES, check_spm_model, write_mapped_vocabulary
from nmt.errors import CheckpointError, ConfigError, DataError, NmtError
from nmt.io import (
    Input,
    Output,
    atomic_dir,
    check_file,
    not_a_folder,
    output_problem,
    parse_json,
    write_json,
    write_text,
)
from nmt.models import build_model
from nmt.models.attention import sinusoidal_positions

IMPORT_KIND = "import"  # the command named in the output folder's marker
IMPORT_FILE = ckpt.IMPORT_FILE  # where the run came from, written beside best.pt
HUB_PREFIX = "hf:"
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
TOKENIZER_FILES = ("source.spm", "target.spm", "vocab.json")
SMALL_FILES = ("config.json", "generation_config.json", "tokenizer_config.json", *TOKENIZER_FILES)
# The logit bias of rows that must take no probability (nmt's padding row; with
# renormalize_logits, Marian's <pad>): exp(-1e4) underflows to exactly 0 in float32, while the
# value stays finite for label smoothing, whose sum over the vocabulary an -inf would spoil.
NO_PROBABILITY = -1e4
POSITION_TOLERANCE = 1e-4  # a stored sinusoidal table may differ from ours by float rounding
OPUS_NAME = re.compile(r"opus-mt-([^-/]+)-([^-/@]+)$")

# ---- config.json -------------------------------------------------------------------------------

ACTIVATIONS = {"swish": "silu", "silu": "silu", "gelu": "gelu", "relu": "relu"}
# MarianConfig's defaults, for fields a config.json leaves out (transformers reads it so too).
MARIAN_DEFAULTS: dict[str, Any] = {
    "vocab_size": 58101, "d_model": 1024, "encoder_layers": 12, "decoder_layers": 12,
    "encoder_attention_heads": 16, "decoder_attention_heads": 16, "encoder_ffn_dim": 4096,
    "decoder_ffn_dim": 4096, "max_position_embeddings": 1024, "activation_function": "gelu",
    "scale_embedding": False, "dropout": 0.1, "attention_dropout": 0.0, "pad_token_id": 58100,
    "eos_token_id": 0, "decoder_start_token_id": 58100,
}  # fmt: skip
# Fields a MarianMTModel must have these values for, or that our Transformer reads (below).
REQUIRED_VALUES: dict[str, Any] = {
    "model_type": "marian",
    "is_encoder_decoder": True,
    "share_encoder_decoder_embeddings": True,
    "tie_word_embeddings": True,
    # Keys of the BART-era configs that most OPUS-MT models still carry, with the only values
    # a MarianMTModel ever had.
    "normalize_before": False,
    "normalize_embedding": False,
    "static_position_embeddings": True,
    "add_final_layer_norm": False,
    "is_decoder": False,
    "add_cross_attention": False,
}
# Training-time settings nmt has no place for; a model trained with them still imports only when
# they are off.
ZERO_VALUES = ("activation_dropout", "encoder_layerdrop", "decoder_layerdrop")
READ_FIELDS = {
    "architectures", "d_model", "encoder_layers", "decoder_layers", "encoder_attention_heads",
    "decoder_attention_heads", "encoder_ffn_dim", "decoder_ffn_dim", "activation_function",
    "max_position_embeddings", "vocab_size", "decoder_vocab_size", "scale_embedding",
    "pad_token_id", "eos_token_id", "decoder_start_token_id", "dropout", "attention_dropout",
    "num_hidden_layers", "hidden_size", "num_attention_heads",
}  # fmt: skip
# Fields that change nothing a MarianMTModel computes: bookkeeping, fine-tuning heads, outputs
# to return, and bos_token_id (Marian starts from decoder_start_token_id).
INERT_FIELDS = {
    "transformers_version", "_name_or_path", "_commit_hash", "torch_dtype", "dtype",
    "use_bfloat16", "id2label", "label2id", "num_labels", "_num_labels", "problem_type",
    "finetuning_task", "tokenizer_class", "prefix", "task_specific_params", "init_std",
    "classif_dropout", "classifier_dropout", "gradient_checkpointing", "use_cache",
    "output_past", "return_dict", "output_hidden_states", "output_attentions", "torchscript",
    "pruned_heads", "chunk_size_feed_forward", "cross_attention_hidden_size",
    "tie_encoder_decoder", "tf_legacy_loss", "add_bias_logits", "extra_pos_embeddings",
    "bos_token_id", "unk_token_id", "sep_token_id", "_attn_implementation_autoset",
    "output_scores", "return_dict_in_generate", "remove_invalid_values",
}  # fmt: skip

# ---- generation settings -----------------------------------------------------------------------

# Generation fields decode settings are made of (`decode_config`).
MAPPED_GENERATION = {
    "num_beams", "num_return_sequences", "length_penalty", "max_length", "max_new_tokens",
    "min_length", "min_new_tokens", "no_repeat_ngram_size", "bad_words_ids", "early_stopping",
    "forced_eos_token_id", "renormalize_logits", "do_sample", "eos_token_id",
    "decoder_start_token_id",
}  # fmt: skip
# Settings nmt's search does not have, with the value that leaves them off.
NEUTRAL_GENERATION: dict[str, Any] = {
    "repetition_penalty": 1.0, "encoder_repetition_penalty": 1.0, "num_beam_groups": 1,
    "diversity_penalty": 0.0, "encoder_no_repeat_ngram_size": 0, "forced_bos_token_id": None,
    "suppress_tokens": None, "begin_suppress_tokens": None, "sequence_bias": None,
    "exponential_decay_length_penalty": None, "force_words_ids": None, "constraints": None,
    "penalty_alpha": None, "guidance_scale": None, "max_time": None, "stop_strings": None,
    "begin_suppress_tokens_index": None, "forced_decoder_ids": None,
}  # fmt: skip
# Only sampling reads these, and generation defaults that sample are refused.
SAMPLING_ONLY = {"temperature", "top_k", "top_p", "typical_p", "epsilon_cutoff", "eta_cutoff",
                 "min_p", "top_h"}  # fmt: skip
INERT_GENERATION = {
    "_from_model_config", "transformers_version", "pad_token_id", "bos_token_id", "use_cache",
    "output_attentions", "output_hidden_states", "output_scores", "output_logits",
    "return_dict_in_generate", "remove_invalid_values", "cache_implementation", "cache_config",
    "low_memory", "watermarking_config", "assistant_confidence_threshold", "num_assistant_tokens",
    "num_assistant_tokens_schedule", "prompt_lookup_num_tokens", "max_matching_ngram_size",
    "assistant_early_exit", "assistant_lookbehind", "target_lookbehind", "is_assistant",
    "token_healing", "dola_layers", "compile_config", "disable_compile", "generation_kwargs",
}  # fmt: skip
HF_DEFAULT_MAX_LENGTH = 20  # what `generate` uses when a model sets neither max_length nor
# max_new_tokens


@dataclass
class MarianFiles:
    """What a MarianMT folder holds, read and checked (nothing converted yet)."""

    folder: Path
    config: dict[str, Any]
    generation: dict[str, Any]  # generation_config.json, else config.json's generation keys
    generation_file: str  # which of the two the generation settings came from
    vocab: dict[str, int]  # vocab.json: piece -> Marian id
    src_spm: bytes
    tgt_spm: bytes
    tokenizer_config: dict[str, Any]


@dataclass
class Imported:
    """What `import_model` wrote, for the command's summary."""

    out: Path
    source: str
    config: RunConfig
    vocab_size: int
    language_tokens: list[str]
    notes: list[str]


def import_model(
    source: str,
    out: Path,
    src_lang: str | None = None,
    tgt_lang: str | None = None,
    log: Callable[[str], None] | None = None,
) -> Imported:
    """`nmt import`: convert the MarianMT model of `source` (hf:OWNER/NAME[@REVISION] or a
    folder) into the run folder `out`. Every check runs before `out` is touched; `out` is built
    under a temp name and renamed, and replaces only an earlier `nmt import` output."""
    out = Path(out)
    say = log or (lambda message: None)
    from_hub = source.startswith(HUB_PREFIX)
    if from_hub:
        folder, revision = download(source, say)
        origin = source if "@" in source else f"{source}@{revision}"
    else:
        folder, origin = Path(source), source
        problem = not_a_folder(folder)
        if problem:
            raise DataError(
                f"{source}: {problem}; give a folder written by save_pretrained, or "
                "hf:OWNER/NAME to download one"
            )
    source_input = Input(folder, "the model folder to import", tree=True)
    ckpt.guard_outputs([Output("--out", out, "folder")], [source_input], ConfigError)
    problem = output_problem(out, IMPORT_KIND)
    if problem:
        raise ConfigError(problem)
    files = read_marian_folder(folder)
    langs = languages(source, files.tokenizer_config, src_lang, tgt_lang)
    model_cfg = model_config(files.config)
    try:
        decode_cfg, notes = decode_config(files.generation, files.config, model_cfg.transformer)
    except ConfigError as exc:
        raise ConfigError(f"{folder / files.generation_file}: {exc}") from None
    order, pieces = vocabulary(files.vocab, files.config)
    weights = download_weights(source, revision, say) if from_hub else find_weights(folder)
    renormalize = bool(files.generation.get("renormalize_logits", False))
    state = convert_weights(read_weights(weights), order, model_cfg, renormalize)
    run_cfg = from_dict(RunConfig, {"model": to_dict(model_cfg), "decode": to_dict(decode_cfg)}, "")
    model = build_model(run_cfg.model, len(pieces), len(pieces), True)
    ckpt.load_model_state(model, state, origin)  # strict: every tensor has its place
    cleaning = from_dict(
        PrepareConfig, {"src_lang": langs[0], "tgt_lang": langs[1], "normalize": False}, ""
    )
    with atomic_dir(out, IMPORT_KIND, [folder], refused=ConfigError) as tmp:
        tok = write_mapped_vocabulary(
            tmp / ckpt.JOINT_SPM, pieces, files.src_spm, files.tgt_spm, origin
        )
        spm_entry = {"file": ckpt.JOINT_SPM, "sha256": tok.sha256}
        vocab = {"src_vocab_size": len(pieces), "tgt_vocab_size": len(pieces),
                 "shared_vocab": True, "src_lang": langs[0], "tgt_lang": langs[1]}  # fmt: skip
        payload = ckpt.imported_payload(
            run_cfg,
            vocab,
            {"src": spm_entry, "tgt": dict(spm_entry)},
            cleaning,
            model.state_dict(),
            {"source": origin, "weights": weights.name},
        )
        with open(tmp / ckpt.BEST, "wb") as handle:  # the folder is renamed into place whole
            torch.save(payload, handle)
        write_text(tmp / ckpt.CONFIG_FILE, dump_yaml(run_cfg))
        write_json(tmp / IMPORT_FILE, {"source": origin, "weights": weights.name,
                                       "nmt_version": __version__, "notes": notes})  # fmt: skip
    codes = [p for p in pieces if p.startswith(">>") and p.endswith("<<")]
    return Imported(out, origin, run_cfg, len(pieces), codes, notes)


# ---- reading a folder ----------------------------------------------------------------------------


def read_marian_folder(folder: Path) -> MarianFiles:
    """The small files of a MarianMT folder (all but the weights), checked for presence and
    form."""
    for name in ("config.json", *TOKENIZER_FILES):
        check_file(folder / name, DataError, f"missing; a MarianMT folder needs {name}")
    config = _read_json_object(folder / "config.json")
    generation = _read_optional(folder / "generation_config.json")
    generation_file = "generation_config.json"
    if generation is None:  # older models keep their generation defaults in config.json
        generation = {k: v for k, v in config.items() if k in _GENERATION_KEYS}
        generation_file = "config.json"
    tokenizer_config = _read_optional(folder / "tokenizer_config.json") or {}
    if tokenizer_config.get("separate_vocabs"):
        raise ConfigError(
            f"{folder / 'tokenizer_config.json'}: separate_vocabs true (a source and a target "
            "vocabulary) is not supported; nmt imports models with one shared vocabulary"
        )
    vocab = _read_json_object(folder / "vocab.json")
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in vocab.values()):
        raise DataError(f"{folder / 'vocab.json'}: expected a mapping of pieces to integer ids")
    spm_files = [folder / "source.spm", folder / "target.spm"]
    for path in spm_files:
        check_spm_model(path.read_bytes(), path)
    return MarianFiles(
        folder=folder,
        config=config,
        generation=generation,
        generation_file=generation_file,
        vocab=vocab,
        src_spm=spm_files[0].read_bytes(),
        tgt_spm=spm_files[1].read_bytes(),
        tokenizer_config=tokenizer_config,
    )


def _read_optional(path: Path) -> dict[str, Any] | None:
    """An optional JSON file of the folder, or None when there is nothing by that name (a
    folder or pipe by that name is refused, not taken for an absent file)."""
    if not path.exists() and not path.is_symlink():
        return None
    check_file(path, DataError)
    return _read_json_object(path)


def find_weights(folder: Path) -> Path:
    for name in WEIGHT_FILES:
        if (folder / name).exists() or (folder / name).is_symlink():
            check_file(folder / name, DataError)
            return folder / name
    for index in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        if (folder / index).is_file():
            raise ConfigError(f"{folder / index}: weights split into shards are not supported")
    raise DataError(f"{folder}: no model.safetensors or pytorch_model.bin (the weights)")


def _read_json_object(path: Path) -> dict[str, Any]:
    try:
        data = parse_json(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: not valid JSON ({str(exc)[:100]})") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a JSON object")
    return data


def languages(
    source: str, tokenizer_config: dict[str, Any], src_lang: str | None, tgt_lang: str | None
) -> tuple[str, str]:
    """Source and target language: the flags, else tokenizer_config.json's source_lang /
    target_lang, else an `opus-mt-SRC-TGT` name."""
    match = OPUS_NAME.search(source.rstrip("/").split("@")[0])
    guess = (match.group(1), match.group(2)) if match else (None, None)
    found = (
        src_lang or tokenizer_config.get("source_lang") or guess[0],
        tgt_lang or tokenizer_config.get("target_lang") or guess[1],
    )
    for flag, lang in zip(("--src-lang", "--tgt-lang"), found, strict=True):
        if not isinstance(lang, str) or not LANG_CODE.match(lang):
            raise ConfigError(
                f"{source}: cannot tell the model's languages ({flag} {lang!r}); pass "
                "--src-lang and --tgt-lang (codes of letters, digits, - and _)"
            )
    if found[0] == found[1]:
        raise ConfigError(f"{source}: source and target language are both {found[0]!r}")
    return str(found[0]), str(found[1])


# ---- config.json -> our model and decode settings ----------------------------------------------


def model_config(config: dict[str, Any]) -> ModelConfig:
    """Our Transformer settings for a MarianMT config.json; ConfigError naming the first field
    (or value) that it cannot express."""
    known = set(REQUIRED_VALUES) | set(ZERO_VALUES) | READ_FIELDS | INERT_FIELDS
    known |= _GENERATION_KEYS
    for key in config:
        if key not in known:
            raise _refused(key, config[key], "is not a MarianMT setting nmt knows")
    for key, value in REQUIRED_VALUES.items():
        if key in config and config[key] != value:
            raise _refused(key, config[key], f"nmt imports only {value!r}")
    if config.get("model_type") != "marian":
        raise _refused("model_type", config.get("model_type"), "nmt imports only 'marian'")
    architectures = config.get("architectures") or ["MarianMTModel"]
    if architectures != ["MarianMTModel"]:
        raise _refused("architectures", architectures, "nmt imports only MarianMTModel")
    for key in ZERO_VALUES:
        if config.get(key, 0.0):
            raise _refused(key, config[key], "nmt has no such setting; only 0 imports")
    for ours, theirs in (("encoder_ffn_dim", "decoder_ffn_dim"),
                         ("encoder_attention_heads", "decoder_attention_heads")):  # fmt: skip
        if _int(config, ours) != _int(config, theirs):
            raise _refused(theirs, config.get(theirs), f"nmt needs it equal to {ours}")
    if config.get("decoder_vocab_size") not in (None, _int(config, "vocab_size")):
        raise _refused("decoder_vocab_size", config["decoder_vocab_size"],
                       "a separate target vocabulary is not supported")  # fmt: skip
    activation = config.get("activation_function", MARIAN_DEFAULTS["activation_function"])
    if activation not in ACTIVATIONS:
        raise _refused("activation_function", activation,
                       f"nmt has {', '.join(sorted(ACTIVATIONS))}")  # fmt: skip
    d_model = _int(config, "d_model")
    if d_model % 2:
        raise _refused("d_model", d_model, "an odd width lays out Marian's sinusoids otherwise")
    if _int(config, "decoder_start_token_id") != _int(config, "pad_token_id"):
        raise _refused("decoder_start_token_id", config.get("decoder_start_token_id"),
                       "nmt starts decoding from pad_token_id, as MarianMTModel does")  # fmt: skip
    _int(config, "eos_token_id")  # one id, not a list
    transformer = {
        "d_model": d_model,
        "heads": _int(config, "encoder_attention_heads"),
        "enc_layers": _int(config, "encoder_layers"),
        "dec_layers": _int(config, "decoder_layers"),
        "ffn_dim": _int(config, "encoder_ffn_dim"),
        "dropout": config.get("dropout", MARIAN_DEFAULTS["dropout"]),
        "attn_dropout": config.get("attention_dropout", MARIAN_DEFAULTS["attention_dropout"]),
        "activation": ACTIVATIONS[activation],
        "pre_norm": False,
        "positions": "sinusoidal",
        "max_positions": _int(config, "max_position_embeddings"),
        "scale_embeddings": config.get("scale_embedding", MARIAN_DEFAULTS["scale_embedding"]),
        "output_bias": True,
    }
    try:
        cfg: ModelConfig = from_dict(
            ModelConfig,
            {"arch": "transformer", "tie_embeddings": True, "transformer": transformer},
            "model",
        )
    except ConfigError as exc:
        raise ConfigError(f"config.json: gives a model nmt cannot build: {exc}") from None
    return cfg


def decode_config(
    generation: dict[str, Any], config: dict[str, Any], model: TransformerConfig
) -> tuple[DecodeConfig, list[str]]:
    """Our decode settings for MarianMT generation defaults (`generate` with them), and notes on
    what still differs. Settings our search does not have are refused unless they are off."""
    for key, value in generation.items():
        if key in MAPPED_GENERATION or key in SAMPLING_ONLY or key in INERT_GENERATION:
            continue
        if key not in NEUTRAL_GENERATION:
            raise _refused(key, value, "is not a generation setting nmt knows", "generation")
        if value not in (NEUTRAL_GENERATION[key], [], {}):
            raise _refused(key, value, "nmt's search has no such setting", "generation")
    if generation.get("do_sample"):
        raise _refused("do_sample", True, "sampling defaults are not imported", "generation")
    pad, eos = _int(config, "pad_token_id"), _int(config, "eos_token_id")
    bad_words = generation.get("bad_words_ids") or []
    if any(words != [pad] for words in bad_words):
        why = f"nmt bans only [[{pad}]] (<pad>), which it never produces"
        raise _refused("bad_words_ids", bad_words, why, "generation")
    # generate takes these from the generation settings when they are there.
    same_ids = {"forced_eos_token_id": eos, "eos_token_id": eos, "decoder_start_token_id": pad}
    for key, expected in same_ids.items():
        if generation.get(key) not in (None, expected, [expected]):
            why = f"nmt needs {expected}, the id config.json gives it"
            raise _refused(key, generation[key], why, "generation")
    beam = _int(generation, "num_beams", 1, "generation")
    if beam < 1:
        raise _refused("num_beams", beam, "expected 1 or more", "generation")
    nbest = _int(generation, "num_return_sequences", 1, "generation")
    if not 1 <= nbest <= beam:
        raise _refused("num_return_sequences", nbest, f"expected 1 to num_beams ({beam})",
                       "generation")  # fmt: skip
    # `generate` counts the start token in max_length and min_length; nmt counts output tokens,
    # EOS left out, and always ends a hypothesis at its maximum length with EOS.
    if generation.get("max_new_tokens") is not None:
        longest = "max_new_tokens"
        most = _int(generation, "max_new_tokens", where="generation") - 1
    else:
        longest = "max_length"
        most = _int(generation, "max_length", HF_DEFAULT_MAX_LENGTH, "generation") - 2
    if most < 1:  # every translation would be empty
        counted = "the start token and </s>" if longest == "max_length" else "</s>"
        why = f"leaves no room for a word: generate counts {counted} in it"
        raise _refused(longest, generation.get(longest), why, "generation")
    most = min(most, model.max_positions - 1)
    if generation.get("min_new_tokens") is not None:
        shortest = "min_new_tokens"
        least = _int(generation, "min_new_tokens", where="generation")
    else:
        shortest = "min_length"
        least = max(0, _int(generation, "min_length", 0, "generation") - 1)
    if least > most:
        why = f"asks for more tokens than the {most} at most that {longest} and the model allow"
        raise _refused(shortest, generation.get(shortest), why, "generation")
    settings = {
        "beam_size": beam,
        "nbest": nbest,
        "length_norm": "power",
        "len_penalty": generation.get("length_penalty", 1.0),
        "max_len_a": 0.0,
        "max_len_b": most,
        "min_len": least,
        "no_repeat_ngram": _int(generation, "no_repeat_ngram_size", 0, "generation"),
    }
    try:
        cfg: DecodeConfig = from_dict(DecodeConfig, settings, "decode")
    except ConfigError as exc:  # a length penalty that is not a number, a negative length ...
        raise ConfigError(f"generation settings: {exc}") from None
    notes = []
    if beam > 1 and generation.get("early_stopping") is not True:
        notes.append(
            f"early_stopping={generation.get('early_stopping', False)!r}: transformers may go on "
            "searching after num_beams hypotheses have ended and keep a better one found later; "
            "nmt ends a sentence's search then (early_stopping=True), so a few beam outputs differ"
        )
    if generation.get("forced_eos_token_id") is None:
        notes.append("no forced_eos_token_id: nmt still ends an output at its maximum length "
                     "with </s>")  # fmt: skip
    return cfg, notes


# config.json keys that are generation defaults (older models keep them there).
_GENERATION_KEYS = MAPPED_GENERATION | set(NEUTRAL_GENERATION) | SAMPLING_ONLY


def _int(
    fields: dict[str, Any], key: str, default: int | None = None, where: str = "config"
) -> int:
    """An integer field, MarianConfig's default (or `default`) when absent or null."""
    value = fields.get(key)
    if value is None:
        value = MARIAN_DEFAULTS[key] if default is None else default
    if not isinstance(value, int) or isinstance(value, bool):
        raise _refused(key, value, "expected an integer", where)
    return value


def _refused(key: str, value: Any, why: str, where: str = "config") -> ConfigError:
    return ConfigError(f"{where} field {key!r} = {json.dumps(value)[:80]}: {why}")


# ---- vocabulary ----------------------------------------------------------------------------------


def vocabulary(vocab: dict[str, int], config: dict[str, Any]) -> tuple[list[int], list[str]]:
    """The Marian id behind each of our ids (-1 for our padding row, which has none) and our
    pieces in id order: <pad> (ours), <unk>, <s> (Marian's <pad>, the decoder start), </s>, then
    every other Marian piece in Marian's order."""
    size = _int(config, "vocab_size")
    if sorted(vocab.values()) != list(range(size)):
        raise DataError(
            f"vocab.json: its ids must be 0 .. {size - 1} (config vocab_size {size}), each once; "
            f"it has {len(vocab)} pieces"
        )
    piece_of = {i: p for p, i in vocab.items()}
    if "<unk>" not in vocab:
        raise DataError("vocab.json: no <unk> piece")
    pad, eos, unk = _int(config, "pad_token_id"), _int(config, "eos_token_id"), vocab["<unk>"]
    if not (0 <= pad < size and 0 <= eos < size):
        raise DataError(
            f"config.json: pad_token_id {pad} / eos_token_id {eos} not in 0 .. {size - 1}"
        )
    if len({pad, eos, unk}) != 3:
        raise DataError(f"vocab.json: <pad> {pad}, </s> {eos} and <unk> {unk} must differ")
    ours = {SPECIAL_PIECES["pad"], SPECIAL_PIECES["bos"]}
    clash = sorted(p for p in vocab if p in ours and vocab[p] != pad)
    if clash:
        raise DataError(f"vocab.json: an ordinary piece {clash[0]!r} takes a name nmt reserves")
    rest = [i for i in range(size) if i not in (pad, eos, unk)]
    order = [-1, unk, pad, eos, *rest]
    assert order[PAD_ID] == -1 and order[UNK_ID] == unk and order[BOS_ID] == pad
    assert order[EOS_ID] == eos
    pieces = [SPECIAL_PIECES[k] for k in ("pad", "unk", "bos", "eos")]
    pieces += [piece_of[i] for i in rest]
    return order, pieces


# ---- weights -------------------------------------------------------------------------------------


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of model.safetensors (safetensors) or pytorch_model.bin (torch.load with
    weights_only=True: plain tensors only, no pickled code runs). A tensor holding NaN or
    infinity is a CheckpointError naming it (`check_finite`)."""
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise ConfigError(
                f"{path}: reading safetensors needs the safetensors package: "
                "pip install 'nmt[import]'"
            ) from None
        try:
            state = dict(load_file(str(path), device="cpu"))
        except Exception as exc:  # the library's own error types, for a damaged file
            raise CheckpointError(
                f"{path}: not a readable safetensors file ({_first(exc)})"
            ) from None
    else:
        state = ckpt.read_torch_file(path, "weights file")
        if not isinstance(state, dict) or not all(
            isinstance(t, torch.Tensor) for t in state.values()
        ):
            raise CheckpointError(f"{path}: expected a mapping of names to tensors")
    ckpt.check_finite(state, path)
    return dict(state)


def _first(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:160]


def convert_weights(
    marian: dict[str, torch.Tensor], order: list[int], cfg: ModelConfig, renormalize: bool
) -> dict[str, torch.Tensor]:
    """Our Transformer's state dict (float32) from a MarianMTModel's. `order` maps our ids to
    Marian's (`vocabulary`). With `renormalize` (generation's renormalize_logits: the search
    renormalises after banning <pad>) Marian's <pad> gets the NO_PROBABILITY bias as well, which
    is the same renormalisation. CheckpointError naming the first tensor that is missing, has
    another shape, or is not expected."""
    t = cfg.transformer
    taken: set[str] = set()

    def take(name: str, shape: tuple[int, ...]) -> torch.Tensor:
        if name not in marian:
            raise CheckpointError(f"weights: {name} missing")
        tensor = marian[name]
        if tuple(tensor.shape) != shape:
            raise CheckpointError(
                f"weights: {name} has shape {tuple(tensor.shape)}, config.json implies {shape}"
            )
        taken.add(name)
        return tensor.float()

    d, f = t.d_model, t.ffn_dim
    state = _embedding_state(marian, take, order, cfg, renormalize)

    def linear(ours: str, theirs: str, rows: int, cols: int) -> None:
        state[f"{ours}.weight"] = take(f"{theirs}.weight", (rows, cols))
        state[f"{ours}.bias"] = take(f"{theirs}.bias", (rows,))

    def fused(ours: str, prefix: str, parts: tuple[str, ...]) -> None:
        state[f"{ours}.weight"] = torch.cat([take(f"{prefix}.{p}.weight", (d, d)) for p in parts])
        state[f"{ours}.bias"] = torch.cat([take(f"{prefix}.{p}.bias", (d,)) for p in parts])

    def norm(ours: str, theirs: str) -> None:
        state[f"{ours}.weight"] = take(f"{theirs}.weight", (d,))
        state[f"{ours}.bias"] = take(f"{theirs}.bias", (d,))

    def self_attention(dst: str, src: str) -> None:
        fused(f"{dst}.self_attn.qkv_proj", f"{src}.self_attn", ("q_proj", "k_proj", "v_proj"))
        linear(f"{dst}.self_attn.out_proj", f"{src}.self_attn.out_proj", d, d)
        norm(f"{dst}.norm1", f"{src}.self_attn_layer_norm")

    def feed_forward(dst: str, src: str, last_norm: str) -> None:
        linear(f"{dst}.ffn.fc1", f"{src}.fc1", f, d)
        linear(f"{dst}.ffn.fc2", f"{src}.fc2", d, f)
        norm(f"{dst}.{last_norm}", f"{src}.final_layer_norm")

    for i in range(t.enc_layers):
        self_attention(f"encoder_layers.{i}", f"model.encoder.layers.{i}")
        feed_forward(f"encoder_layers.{i}", f"model.encoder.layers.{i}", "norm2")
    for i in range(t.dec_layers):
        src, dst = f"model.decoder.layers.{i}", f"decoder_layers.{i}"
        self_attention(dst, src)
        linear(f"{dst}.cross_attn.q_proj", f"{src}.encoder_attn.q_proj", d, d)
        fused(f"{dst}.cross_attn.kv_proj", f"{src}.encoder_attn", ("k_proj", "v_proj"))
        linear(f"{dst}.cross_attn.out_proj", f"{src}.encoder_attn.out_proj", d, d)
        norm(f"{dst}.norm2", f"{src}.encoder_attn_layer_norm")
        feed_forward(dst, src, "norm3")
    unexpected = sorted(set(marian) - taken)
    if unexpected:
        raise CheckpointError(
            f"weights: {unexpected[0]} is not part of a MarianMTModel nmt imports"
            + (f" (and {len(unexpected) - 1} more)" if len(unexpected) > 1 else "")
        )
    return state


def _embedding_state(
    marian: dict[str, torch.Tensor],
    take: Callable[[str, tuple[int, ...]], torch.Tensor],
    order: list[int],
    cfg: ModelConfig,
    renormalize: bool,
) -> dict[str, torch.Tensor]:
    """The embeddings (one table: source, target and output layer) and the fixed logits bias of
    our state dict, in our vocabulary's order; the stored positions, when a file has them, must
    be the sinusoidal table both compute."""
    t = cfg.transformer
    d, size = t.d_model, len(order) - 1
    shared = _shared_embeddings(marian, take, (size, d))
    ids = torch.tensor(order[1:])
    embeddings = torch.cat([torch.zeros(1, d), shared[ids]])  # (V + 1, D)
    bias = torch.zeros(size)  # what transformers starts from when a file has none
    if "final_logits_bias" in marian:
        bias = take("final_logits_bias", (1, size))[0]
    logits_bias = torch.cat([torch.tensor([NO_PROBABILITY]), bias[ids]])
    if renormalize:
        logits_bias[BOS_ID] = NO_PROBABILITY
    state = {name: embeddings for name in ("src_embed.weight", "tgt_embed.weight", "output.weight")}
    state["logits_bias"] = logits_bias
    table = sinusoidal_positions(t.max_positions, d)
    for stack in ("encoder", "decoder"):
        name = f"model.{stack}.embed_positions.weight"
        if name in marian:
            stored = take(name, (t.max_positions, d))
            if (stored - table).abs().max() > POSITION_TOLERANCE:
                raise CheckpointError(
                    f"weights: {name} is not the sinusoidal table Marian and nmt compute"
                )
    return state


# Names under which a MarianMTModel's one embedding table is saved: newer transformers write it
# once, older versions under every name that shares it.
EMBEDDING_NAMES = (
    "model.shared.weight",
    "model.encoder.embed_tokens.weight",
    "model.decoder.embed_tokens.weight",
    "lm_head.weight",
)


def _shared_embeddings(
    marian: dict[str, torch.Tensor],
    take: Callable[[str, tuple[int, ...]], torch.Tensor],
    shape: tuple[int, int],
) -> torch.Tensor:
    """The embedding table, after checking that every copy of it holds the same values (an
    untied output layer or per-side embeddings are refused)."""
    present = [name for name in EMBEDDING_NAMES if name in marian]
    if not present:
        raise CheckpointError(f"weights: {EMBEDDING_NAMES[0]} missing")
    tables = [take(name, shape) for name in present]
    for name, table in zip(present[1:], tables[1:], strict=True):
        if not torch.equal(table, tables[0]):
            raise CheckpointError(
                f"weights: {name} differs from {present[0]}; nmt imports models whose source, "
                "target and output embeddings are one table"
            )
    return tables[0]


# ---- the Hugging Face Hub ------------------------------------------------------------------------


def download(source: str, say: Callable[[str], None]) -> tuple[Path, str]:
    """The small files of `hf:OWNER/NAME[@REVISION]` in huggingface_hub's cache (downloaded
    unless there already), and the commit they are from. Weights come later
    (`download_weights`), once the config has been checked."""
    repo, revision = _hub_name(source)
    hub = _import_hub(source)
    try:
        folder = Path(
            hub.snapshot_download(repo, revision=revision, allow_patterns=list(SMALL_FILES))
        )
    except Exception as exc:  # offline, no such model, a network error: the hub's own types
        raise _download_error(source, exc, hub) from None
    return folder, folder.name


def download_weights(source: str, commit: str, say: Callable[[str], None]) -> Path:
    """The weights file of `source` at `commit`: model.safetensors, else pytorch_model.bin."""
    repo, _ = _hub_name(source)
    hub = _import_hub(source)
    try:
        names = set(hub.list_repo_files(repo, revision=commit))
    except Exception as exc:
        cached = [n for n in WEIGHT_FILES if _cached(hub, repo, n, commit)]
        if not cached:
            raise _download_error(source, exc, hub) from None
        names = set(cached)
    name = next((n for n in WEIGHT_FILES if n in names), None)
    if name is None:
        raise DataError(f"{source}: the repository has no model.safetensors or pytorch_model.bin")
    say(f"downloading {repo}/{name}")
    try:
        return Path(hub.hf_hub_download(repo, name, revision=commit))
    except Exception as exc:
        raise _download_error(source, exc, hub) from None


def _cached(hub: Any, repo: str, name: str, commit: str) -> bool:
    try:
        return isinstance(hub.try_to_load_from_cache(repo, name, revision=commit), str)
    except Exception:
        return False


def _hub_name(source: str) -> tuple[str, str | None]:
    repo, _, revision = source[len(HUB_PREFIX) :].partition("@")
    if not re.fullmatch(r"[\w.-]+/[\w.-]+", repo):
        raise ConfigError(f"{source}: expected hf:OWNER/NAME, e.g. hf:Helsinki-NLP/opus-mt-de-en")
    return repo, revision or None


def _import_hub(source: str) -> Any:
    try:
        import huggingface_hub
    except ImportError:
        raise ConfigError(
            f"{source}: downloading needs huggingface_hub: pip install 'nmt[import]'"
        ) from None
    return huggingface_hub


def _download_error(source: str, exc: Exception, hub: Any) -> NmtError:
    offline = getattr(getattr(hub, "constants", None), "HF_HUB_OFFLINE", False)
    if offline:
        why = "HF_HUB_OFFLINE is set and the files are not in the local cache"
    elif type(exc).__name__ == "LocalEntryNotFoundError":  # no connection, nothing cached
        cause = exc.__cause__ or exc.__context__
        detail = f" ({type(cause).__name__}: {_first(cause)})" if cause else ""
        why = f"it cannot be reached and the files are not in the local cache{detail}"
    elif type(exc).__name__ in ("RepositoryNotFoundError", "RevisionNotFoundError"):
        why = f"no such model or revision ({type(exc).__name__})"
    else:
        why = f"{type(exc).__name__}: {_first(exc)}"
    return DataError(
        f"{source}: cannot download from the Hugging Face Hub: {why}. With internet access run "
        "this again, or import a folder saved by save_pretrained: nmt import PATH --out DIR"
    )


__all__ = ["IMPORT_FILE", "Imported", "import_model"]
