"""Every setting of `nmt`, as typed frozen dataclasses: one per concern, defaults written once.

YAML keys, `--set section.key=value` overrides and the named CLI flags all use these field names.
Loading checks types and names: an unknown key is a `ConfigError` that names the closest valid key.
Cross-field rules live in each class's `validate()`. `to_dict()` output is what checkpoints and
prepared directories store, and `from_dict()` rebuilds the same object from it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import math
import re
import reprlib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

import yaml

from nmt.errors import ConfigError
from nmt.io import check_file, decode_utf8

# Special token ids. `nmt prepare` trains SentencePiece with exactly these ids, so models, batching
# and decoding can rely on them without carrying a vocabulary object around.
PAD_ID = 0
UNK_ID = 1
BOS_ID = 2
EOS_ID = 3

# Bounds that keep a typo from reaching a library as an overflow or a terabyte allocation.
# SentencePiece and torch take 32-bit signed integers for counts, sizes and seeds.
INT32_MAX = 2**31 - 1
MAX_WIDTH = 1 << 17  # d_model, ffn_dim, RNN sizes: far above any published model
MAX_LAYERS = 1000
MAX_POSITIONS = 1 << 20
MAX_BEAM = 10_000  # hypotheses per sentence: the (K, V) score matrices must fit in memory
# |len_penalty| and coverage_penalty at most: beyond, the normalised scores of long outputs leave
# float32 (1,024 ** 10 is 1e30) and a search would rank infinities.
PENALTY_LIMIT = 10.0
# A language code names files (PREFIX.de) and columns: letters, digits, - and _, no path parts.
LANG_CODE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,31}$")


@dataclass(frozen=True)
class PrepareConfig:
    """How `nmt prepare` cleans a corpus and trains SentencePiece."""

    src_lang: str = "de"
    tgt_lang: str = "en"
    # Cleaning. Lengths are counted in whitespace-separated words before subword segmentation;
    # Japanese/Chinese text has few spaces, so length filters count characters / 4 for those lines
    # when `length_unit` is "auto".
    normalize: bool = True  # Unicode NFKC
    lowercase: bool = False
    min_len: int = 1
    max_len: int = 250
    max_ratio: float = 9.0  # longer/shorter side, in the same unit; 0 turns the filter off
    length_unit: Literal["auto", "words", "chars"] = "auto"
    dedup: bool = False
    errors: Literal["strict", "replace"] = "strict"  # invalid UTF-8: stop, or use U+FFFD
    # Table columns (TSV/CSV header names, JSONL/Parquet keys) when they are not the language codes;
    # a 0-based number selects a column of a header-less TSV/CSV. Empty: use src_lang / tgt_lang.
    src_column: str = ""
    tgt_column: str = ""
    # SentencePiece.
    vocab_size: int = 8000
    model_type: Literal["unigram", "bpe"] = "unigram"
    joint_vocab: bool = True
    character_coverage: float = 1.0
    user_defined_symbols: tuple[str, ...] = ()
    byte_fallback: bool = False
    spm_model: str | None = None  # reuse an existing model (joint) instead of training one
    spm_tgt_model: str | None = None  # with joint_vocab false: the target side's model to reuse
    # SentencePiece input_sentence_size: a larger corpus is sampled down to this many sentences
    # (both sides count). Its trainer holds every sentence it samples, at about 2.6 KB each
    # (measured: 500k sentences, 1.3 GB), and 300k already pin down an 8k-32k vocabulary.
    spm_max_sentences: int = 300_000
    # false: vocab_size is an upper bound (a small corpus gets fewer pieces instead of an error).
    hard_vocab_limit: bool = True
    # SentencePiece training threads. Part of the recipe: the learned vocabulary depends on it.
    spm_threads: int = 2
    seed: int = 1234
    # SentencePiece's batch encoder threads for `nmt prepare`'s encoding (1: the library's default,
    # every core); speed only, so it is left out of the prepared folder's cache key.
    num_proc: int = 1
    # "eflomal": word-align the training pairs (eflomal, both directions, grow-diag-final-and)
    # and store the links on SentencePiece pieces, for train.guided_alignment (nmt/data/align.py).
    alignments: Literal["none", "eflomal"] = "none"

    def validate(self) -> None:
        for name in ("src_lang", "tgt_lang"):
            if not LANG_CODE.match(getattr(self, name)):
                raise ConfigError(
                    f"{name} {show(getattr(self, name))}: expected a language code of letters, "
                    "digits, - and _ (de, pt_BR, zh-Hans)"
                )
        for name in ("vocab_size", "spm_max_sentences", "spm_threads", "seed", "num_proc"):
            if not 0 <= getattr(self, name) <= INT32_MAX:
                raise ConfigError(f"{name} must be in [0, {INT32_MAX}], got {getattr(self, name)}")
        if self.src_lang == self.tgt_lang:
            raise ConfigError(f"src_lang and tgt_lang are both {self.src_lang!r}; they must differ")
        if self.vocab_size < 8:
            raise ConfigError(f"vocab_size must be at least 8, got {self.vocab_size}")
        if not 0 < self.character_coverage <= 1:
            raise ConfigError("character_coverage must be in (0, 1]")
        if self.min_len < 0 or self.max_len < max(1, self.min_len):
            raise ConfigError(
                f"need 0 <= min_len <= max_len, got {self.min_len} and {self.max_len}"
            )
        if self.max_ratio < 0:
            raise ConfigError("max_ratio must be >= 0 (0 turns the ratio filter off)")
        if self.num_proc < 1:
            raise ConfigError("num_proc must be >= 1")
        if self.spm_threads < 1:
            raise ConfigError("spm_threads must be >= 1")
        if self.joint_vocab and self.spm_tgt_model:
            raise ConfigError("spm_tgt_model needs joint_vocab: false (a joint model is spm_model)")
        if bool(self.src_column) != bool(self.tgt_column):
            raise ConfigError("set both src_column and tgt_column, or neither")


# "local" is Luong's local-p (predicted window centre), "local-m" his monotonic local attention;
# "hard" attends to one source position (Xu et al. 2015), sampled in training, argmax otherwise.
RNNAttention = Literal["bahdanau", "luong-dot", "luong-general", "local", "local-m", "hard"]


@dataclass(frozen=True)
class RNNConfig:
    """RNN encoder-decoder with attention (Bahdanau et al. 2015; Luong et al. 2015)."""

    cell: Literal["gru", "lstm"] = "gru"
    emb_dim: int = 256
    hidden_size: int = 512  # decoder size; each encoder direction has hidden_size // 2
    enc_layers: int = 1
    dec_layers: int = 1
    attention: RNNAttention = "bahdanau"
    attn_dim: int = 512  # size of the additive attention's hidden layer
    local_window: int = 10  # D of Luong's local attention: window [p - D, p + D], sigma = D / 2
    gumbel_tau: float = 1.0  # temperature of hard attention's straight-through Gumbel-softmax
    # The attention result enters the decoder recurrence: the context c_t for Bahdanau (the paper's
    # model), the previous readout for the Luong variants (their "input feeding"). False lets
    # teacher forcing run the decoder RNN over the whole target in one call.
    input_feeding: bool = True
    dropout: float = 0.3
    # Longest sentence in positions (subwords plus the EOS or BOS) that training keeps and that
    # translation takes (longer sources are cut, with a warning): the bound a Transformer's
    # max_positions sets, so that one stray long line cannot take minutes or all memory.
    max_positions: int = 1024

    def validate(self) -> None:
        if self.hidden_size % 2:
            raise ConfigError("model.rnn.hidden_size must be even (two encoder directions)")
        check_sizes(
            "model.rnn",
            widths={"emb_dim": self.emb_dim, "attn_dim": self.attn_dim,
                    "hidden_size": self.hidden_size},
            layers={"enc_layers": self.enc_layers, "dec_layers": self.dec_layers},
            max_positions=self.max_positions,
        )  # fmt: skip
        if self.attention in ("local", "local-m") and self.local_window < 1:
            raise ConfigError(f"model.rnn.local_window must be >= 1, got {self.local_window}")
        if not self.gumbel_tau > 0:
            raise ConfigError(f"model.rnn.gumbel_tau must be > 0, got {self.gumbel_tau}")
        if not 0 <= self.dropout < 1:
            raise ConfigError("model.rnn.dropout must be in [0, 1)")


def check_sizes(
    section: str, widths: dict[str, int], layers: dict[str, int], max_positions: int
) -> None:
    """ConfigError unless every width is in [1, MAX_WIDTH], every layer count in [1, MAX_LAYERS]
    and max_positions in [2, MAX_POSITIONS] (a subword and its EOS)."""
    bounds = [(name, value, 1, MAX_WIDTH) for name, value in widths.items()]
    bounds += [(name, value, 1, MAX_LAYERS) for name, value in layers.items()]
    bounds.append(("max_positions", max_positions, 2, MAX_POSITIONS))
    for name, value, low, high in bounds:
        if not low <= value <= high:
            raise ConfigError(f"{section}.{name} must be in [{low}, {high:,}], got {show(value)}")


@dataclass(frozen=True)
class TransformerConfig:
    """Transformer encoder-decoder (Vaswani et al. 2017)."""

    d_model: int = 256
    heads: int = 4
    enc_layers: int = 3
    dec_layers: int = 3
    ffn_dim: int = 1024
    dropout: float = 0.1
    attn_dropout: float = 0.1
    activation: Literal["relu", "gelu", "silu"] = "relu"  # silu: Marian's "swish"
    pre_norm: bool = True  # false: the paper's post-norm, as Marian models have it
    positions: Literal["sinusoidal", "learned"] = "sinusoidal"
    max_positions: int = 1024
    # Embeddings times sqrt(d_model) (section 3.4); false for models trained without it.
    scale_embeddings: bool = True
    # A fixed per-token bias added to the output logits (a buffer, kept as it is by training):
    # Marian's final_logits_bias.
    output_bias: bool = False

    def validate(self) -> None:
        check_sizes(
            "model.transformer",
            widths={"d_model": self.d_model, "heads": self.heads, "ffn_dim": self.ffn_dim},
            layers={"enc_layers": self.enc_layers, "dec_layers": self.dec_layers},
            max_positions=self.max_positions,
        )
        if self.d_model % self.heads:
            raise ConfigError(
                f"model.transformer.d_model ({self.d_model}) must be divisible by "
                f"model.transformer.heads ({self.heads})"
            )
        if not (0 <= self.dropout < 1 and 0 <= self.attn_dropout < 1):
            raise ConfigError("model.transformer dropouts must be in [0, 1)")


@dataclass(frozen=True)
class ModelConfig:
    arch: Literal["rnn", "transformer"] = "transformer"
    # Tie target embeddings with the output layer; with a joint vocabulary the source ones too.
    tie_embeddings: bool = True
    rnn: RNNConfig = field(default_factory=RNNConfig)
    transformer: TransformerConfig = field(default_factory=TransformerConfig)

    @property
    def max_positions(self) -> int:
        """Positions one sentence may take on either side (its subwords plus EOS or BOS)."""
        return self.rnn.max_positions if self.arch == "rnn" else self.transformer.max_positions

    def validate(self) -> None:
        self.rnn.validate()
        self.transformer.validate()


FREEZABLE_PARTS = ("encoder", "decoder", "embeddings")
# The Transformer cross-attention head that train.guided_alignment supervises and that hard
# alignments then come from: (decoder layer, head), head 0 of the penultimate layer as in
# Garg et al. 2019.
GUIDED_ALIGNMENT_HEAD = (-2, 0)


@dataclass(frozen=True)
class TrainConfig:
    max_steps: int = 100_000  # optimizer updates
    max_epochs: int = 0  # 0: no epoch limit
    # Wall-clock budget of the run, across resumes; 0: none. When it runs out: validate, save, stop.
    max_minutes: float = 0.0
    batch_tokens: int = 4096  # padded source + target tokens per batch (per GPU)
    update_freq: int = 1  # gradient accumulation: batches per update
    optimizer: Literal["adam", "adamw"] = "adamw"
    lr: float = 5e-4
    betas: tuple[float, float] = (0.9, 0.98)
    weight_decay: float = 0.0
    schedule: Literal["inverse-sqrt", "noam", "plateau", "constant"] = "inverse-sqrt"
    warmup_steps: int = 4000
    plateau_factor: float = 0.5
    plateau_patience: int = 2  # validations without improvement before the LR is cut
    min_lr: float = 1e-6
    clip_norm: float = 1.0  # 0: no clipping
    label_smoothing: float = 0.1
    seed: int = 1
    log_every: int = 50
    valid_every: int = 1000
    save_every: int = 1000
    keep_last: int = 5  # periodic checkpoints kept (for `nmt average`)
    valid_metric: Literal["bleu", "loss"] = "bleu"
    valid_beam: int = 1  # 1: greedy decoding for validation BLEU
    valid_max_sentences: int = 0  # 0: the whole validation set
    patience: int = 0  # early stopping after this many validations without improvement; 0: off
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # auto: bf16 autocast where the GPU or CPU computes bf16 natively (AMX, AVX512-BF16), else fp32
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    compile: bool = False  # torch.compile the model
    max_nan_steps: int = 10  # consecutive non-finite losses before the run stops
    deterministic: bool = (
        False  # torch.use_deterministic_algorithms (CPU runs are bitwise repeatable)
    )
    num_threads: int = 0  # torch CPU threads; 0: torch's default
    # Fine-tuning (`nmt train --init`): the checkpoint file the weights start from and its sha256,
    # filled in by `nmt train`; empty for a run from random weights. Optimizer, schedule, counters
    # and RNG start fresh either way.
    init: str = ""
    init_sha256: str = ""
    # Parts whose weights stay fixed (left out of the optimizer), any of FREEZABLE_PARTS:
    # "encoder" and "decoder" are their layers (an RNN's bridge and attention count as decoder);
    # "embeddings" is every embedding table (source, target, learned positions), which includes
    # the output layer's weight when tie_embeddings makes it the same tensor.
    freeze: tuple[str, ...] = ()
    # lambda of the guided-alignment loss (needs data prepared with alignments=eflomal): the
    # cross-entropy between the stored links and one cross-attention head of the penultimate
    # Transformer decoder layer (Garg et al. 2019), or the RNN's attention (Liu et al. 2016).
    guided_alignment: float = 0.0

    def validate(self) -> None:
        unknown = [part for part in self.freeze if part not in FREEZABLE_PARTS]
        if unknown:
            raise ConfigError(
                f"train.freeze: unknown part {unknown[0]!r}; valid parts: "
                f"{', '.join(FREEZABLE_PARTS)}"
            )
        if set(self.freeze) >= set(FREEZABLE_PARTS):  # every parameter belongs to one of them
            raise ConfigError(
                f"train.freeze=[{', '.join(self.freeze)}]: nothing left to train; leave at least "
                "one part out of the list"
            )
        if self.max_steps < 1:
            raise ConfigError("train.max_steps must be >= 1")
        if self.batch_tokens < 16:
            raise ConfigError(f"train.batch_tokens must be >= 16, got {self.batch_tokens}")
        if self.update_freq < 1:
            raise ConfigError("train.update_freq must be >= 1")
        if self.lr <= 0:
            raise ConfigError("train.lr must be > 0")
        if not 0 <= self.label_smoothing < 1:
            raise ConfigError("train.label_smoothing must be in [0, 1)")
        if min(self.log_every, self.valid_every, self.save_every) < 1:
            raise ConfigError("train.log_every, valid_every and save_every must be >= 1")
        if self.max_minutes < 0:
            raise ConfigError("train.max_minutes must be >= 0")
        if not all(0 <= beta < 1 for beta in self.betas):
            raise ConfigError(f"train.betas must both be in [0, 1), got {list(self.betas)}")
        if not 0 < self.plateau_factor <= 1:
            raise ConfigError("train.plateau_factor must be in (0, 1]")
        if self.valid_beam < 1 or self.max_nan_steps < 1:
            raise ConfigError("train.valid_beam and train.max_nan_steps must be >= 1")
        counts = ("max_epochs", "warmup_steps", "plateau_patience", "keep_last",
                  "valid_max_sentences", "patience", "num_threads", "seed")  # fmt: skip
        for name in counts:
            if not 0 <= getattr(self, name) <= INT32_MAX:
                raise ConfigError(
                    f"train.{name} must be in [0, {INT32_MAX}], got {getattr(self, name)}"
                )
        for name in ("weight_decay", "min_lr", "clip_norm", "guided_alignment"):
            if getattr(self, name) < 0:
                raise ConfigError(f"train.{name} must be >= 0, got {getattr(self, name)}")


@dataclass(frozen=True)
class DecodeConfig:
    """How `nmt translate` / `evaluate` search (nmt/decoding/beam.py) and export attention."""

    beam_size: int = 5  # 1: greedy search
    nbest: int = 1  # hypotheses per sentence (beam search), or samples per sentence (sampling)
    # Length normalisation of finished hypotheses: "power" divides the summed log-probability by
    # len ** len_penalty (fairseq's and CTranslate2's rule, so an export decodes alike), "gnmt" by
    # ((5 + len) / 6) ** len_penalty (Wu et al. 2016), "avg" by len, "none" by 1. Lengths count
    # the EOS.
    length_norm: Literal["power", "gnmt", "avg", "none"] = "power"
    len_penalty: float = 1.0
    # beta of GNMT's coverage penalty (Wu et al. 2016), added to the normalised score of finished
    # hypotheses: beta * sum over source positions of log(min(attention received, 1)). Needs the
    # attention rows, so > 0 makes the search compute them; 0 leaves it as it was.
    coverage_penalty: float = 0.0
    # max target length = floor(a * S + b), S = source tokens + EOS; EOS is forced there
    max_len_a: float = 1.5
    max_len_b: int = 10
    min_len: int = 0  # EOS is banned before this many tokens
    no_repeat_ngram: int = 0  # n > 0: no n-gram may occur twice in an output
    suppress_unk: bool = False
    # Sampling instead of beam search when `sample` is true.
    sample: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 1
    # bf16: weights and activations in bfloat16, log-probs still float32. 1.2-1.7x faster on a CPU
    # with AVX512-BF16 (bench/NOTES.md), and on GPUs; outputs can differ slightly from fp32.
    # int8 (CPU only): linear layers with int8 weights and dynamically quantized inputs
    # (nmt/models/quantized.py); the rest stays float32.
    precision: Literal["fp32", "bf16", "int8"] = "fp32"
    # Padded source tokens per decoding batch. On a CPU 1-2k is fastest (the (B*K, V) score
    # matrices of a step stay in cache); a GPU likes more.
    batch_tokens: int = 2000
    # Transformer attention export: which decoder layer and head(s) make the alignment matrix.
    # layer: index (negative counts from the end), "mean" or "all"; head: index, "mean" or "all".
    # With "all" the exported matrix keeps that axis: (layers, heads, tgt, src).
    attention_layer: str = "-1"
    attention_head: str = "mean"
    # Hard alignments (--alignments-out): 0 links each target word to its most attended source
    # word; a value in (0, 1] links every pair whose word-level attention reaches it.
    align_threshold: float = 0.0
    # Split each input line into sentences (nmt/data/sentences.py), translate them in the same
    # batches as everything else and join the translations with the line's own spacing.
    split: bool = True
    # A sentence longer than the model can take (Transformer max_positions - 1 subwords): "split"
    # cuts it into pieces at word boundaries (nothing is lost), "truncate" drops its end, "error"
    # stops; "split" and "truncate" warn with the line, and the command ends with a count.
    too_long: Literal["split", "truncate", "error"] = "split"

    def validate(self) -> None:
        if self.beam_size < 1 or self.nbest < 1:
            raise ConfigError("need decode.beam_size >= 1 and decode.nbest >= 1")
        if max(self.beam_size, self.nbest) > MAX_BEAM:
            raise ConfigError(f"decode.beam_size and decode.nbest must be <= {MAX_BEAM:,}")
        if not self.sample and self.nbest > self.beam_size:
            raise ConfigError(
                f"decode.nbest ({self.nbest}) cannot exceed decode.beam_size ({self.beam_size})"
            )
        if self.temperature <= 0 or not 0 < self.top_p <= 1 or self.top_k < 0:
            raise ConfigError(
                "need decode.temperature > 0, 0 < decode.top_p <= 1, decode.top_k >= 0"
            )
        if not -PENALTY_LIMIT <= self.len_penalty <= PENALTY_LIMIT:
            raise ConfigError(
                f"decode.len_penalty must be in [-{PENALTY_LIMIT:g}, {PENALTY_LIMIT:g}], got "
                f"{self.len_penalty:g}"
            )
        if not 0 <= self.coverage_penalty <= PENALTY_LIMIT:
            raise ConfigError(
                f"decode.coverage_penalty must be in [0, {PENALTY_LIMIT:g}], got "
                f"{self.coverage_penalty:g}"
            )
        if self.max_len_a < 0 or self.max_len_b < 0 or self.min_len < 0:
            raise ConfigError("decode.max_len_a, max_len_b and min_len must be >= 0")
        if self.max_len_a > MAX_POSITIONS or max(self.max_len_b, self.min_len) > MAX_POSITIONS:
            raise ConfigError(
                f"decode.max_len_a, max_len_b and min_len must be <= {MAX_POSITIONS:,}"
            )
        if self.no_repeat_ngram < 0 or self.batch_tokens < 1:
            raise ConfigError("need decode.no_repeat_ngram >= 0 and decode.batch_tokens >= 1")
        if not 0 <= self.seed <= INT32_MAX:
            raise ConfigError(f"decode.seed must be in [0, {INT32_MAX}], got {self.seed}")
        if not 0 <= self.align_threshold <= 1:
            raise ConfigError("decode.align_threshold must be in [0, 1] (0: argmax per word)")
        for name in ("attention_layer", "attention_head"):
            value = getattr(self, name)
            if value not in ("mean", "all") and not value.lstrip("-").isdigit():
                raise ConfigError(
                    f"decode.{name} must be an integer, 'mean' or 'all', got {value!r}"
                )


@dataclass(frozen=True)
class RunConfig:
    """Everything a training run needs; stored in every checkpoint and run directory."""

    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)

    def validate(self) -> None:
        self.model.validate()
        self.train.validate()
        self.decode.validate()
        layers = self.model.transformer.dec_layers
        if self.train.guided_alignment > 0 and self.model.arch == "transformer" and layers < 2:
            raise ConfigError(
                "train.guided_alignment supervises a head of the penultimate decoder layer: it "
                f"needs model.transformer.dec_layers >= 2, got {layers}"
            )


@dataclass(frozen=True)
class ServeConfig:
    """How `nmt serve` (nmt/serve/) listens, batches requests together and bounds them, and which
    clients it answers."""

    host: str = "127.0.0.1"  # loopback only, unless a wider address is asked for
    port: int = 8080  # 0: any free port (the address is printed at start)
    device: str = "auto"
    # Source subwords (+1 EOS per sentence) queued requests may add up to before they are decoded
    # together; 0: the first model's decode.batch_tokens.
    max_batch_tokens: int = 0
    # Once the decoder is free and a request waits, how long at most it waits for more to join
    # the batch (less once as many sentences as its last batch are back).
    max_wait_ms: float = 5.0
    max_sentences: int = 64  # per request
    max_chars: int = 20000  # per request, all sentences together
    max_beam: int = 16
    max_queue: int = 2048  # sentences waiting; beyond it new requests get 503
    drain_seconds: float = 30.0  # after SIGINT/SIGTERM, time left to in-flight requests
    # Host header names answered besides the loopback ones (127.0.0.1, localhost, ::1) and a
    # specific --host address; "*" answers any (a Host check stops DNS rebinding).
    allow_hosts: tuple[str, ...] = ()
    # Origins (scheme://host[:port]) whose pages may call the server besides its own; "*": any.
    allow_origins: tuple[str, ...] = ()
    header_timeout: float = 10.0  # seconds for a client to send its request line and headers
    body_timeout: float = 30.0  # seconds for a client to send a request body once it started
    max_connections: int = 256  # open connections; beyond it a new one gets 503 and is closed
    # torch CPU threads for decoding; 0: torch's default (one per core). On a small shared
    # machine fewer threads can answer faster (README "Translating documents", threads).
    threads: int = 0

    def validate(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"--port {self.port}: expected 0-65535 (0: any free port)")
        if not self.host.strip():
            raise ConfigError("--host is empty; give an address such as 127.0.0.1")
        # Bounds that keep every setting usable as a timeout, a count or a size at run time
        # (a wait of 1e300 ms overflows the decoder thread's timer).
        ranges = {
            "max_batch_tokens": (0, 10_000_000),
            "max_wait_ms": (0, 60_000),
            "drain_seconds": (0, 3600),
            "header_timeout": (0.01, 3600),
            "body_timeout": (0.01, 3600),
            "max_sentences": (1, 100_000),
            "max_chars": (1, 10_000_000),
            "max_beam": (1, 1024),
            "max_queue": (1, 10_000_000),
            "max_connections": (1, 100_000),
            "threads": (0, 1024),
        }
        for name, (low, high) in ranges.items():
            value = getattr(self, name)
            if not low <= value <= high:  # NaN fails every comparison
                flag = "--" + name.replace("_", "-")
                raise ConfigError(f"{flag} {value:g}: expected {low:g} to {high:g}")
        for origin in self.allow_origins:
            if origin != "*" and not re.fullmatch(r"https?://[^/\s]+", origin):
                raise ConfigError(
                    f"--allow-origin {origin!r}: expected scheme://host[:port] (such as "
                    "https://example.org) or *"
                )
        for name in self.allow_hosts:
            if not name or any(c.isspace() or c in "/@" for c in name):
                raise ConfigError(f"--allow-host {name!r}: expected a host name or address, or *")


# Fields that may differ between a stored run and a resumed one: they change when or how long the
# run goes on, not what a step computes.
RESUME_SAFE_FIELDS = frozenset(
    {
        "train.max_steps",
        "train.max_epochs",
        "train.max_minutes",
        "train.log_every",
        "train.valid_every",
        "train.save_every",
        "train.keep_last",
        "train.patience",
        "train.device",
        "train.num_threads",
        "train.valid_max_sentences",
        "train.valid_beam",
        "train.compile",  # same maths, another execution strategy
    }
)
RESUME_SAFE_SECTIONS = ("decode.",)

# Model fields that regularise training without changing the weights' shapes or meaning: a
# fine-tuning run (`nmt train --init`) may set them differently from its init checkpoint.
MODEL_REGULARISATION_FIELDS = frozenset(
    {"model.rnn.dropout", "model.transformer.dropout", "model.transformer.attn_dropout"}
)

C = TypeVar("C")


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain dict of a config dataclass (tuples become lists, so YAML and JSON can hold it)."""

    def plain(value: Any) -> Any:
        if dataclasses.is_dataclass(value):
            return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, tuple | list):
            return [plain(v) for v in value]
        return value

    return plain(cfg)


def from_dict(cls: type[C], data: dict[str, Any] | None, where: str = "") -> C:
    """Build `cls` from a (possibly partial) dict, checking names and types; then validate."""
    obj = _build(cls, data or {}, where)
    validate = getattr(obj, "validate", None)
    if validate is not None:
        validate()
    return obj


def _build(cls: Any, data: Any, where: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        dotted = f"{where}.{key}" if where else str(key)
        if key not in names:
            raise ConfigError(f"unknown config key {show(dotted)}{_suggest(key, names, where)}")
        kwargs[key] = _coerce(hints[key], value, dotted)
    return cls(**kwargs)


def _suggest(key: str, names: list[str], where: str) -> str:
    close = difflib.get_close_matches(str(key), names, n=1, cutoff=0.5)
    if close:
        return f"; did you mean {(where + '.' if where else '') + close[0]!r}?"
    return f"; valid keys here: {', '.join(names)}"


def _coerce(hint: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, key)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(inner[0], value, key)
    if origin is Literal:
        if value not in args:
            choices = ", ".join(repr(a) for a in args)
            raise ConfigError(f"config key {key!r}: got {show(value)}, expected one of {choices}")
        return value
    if origin is tuple:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list | tuple):
            raise ConfigError(f"config key {key!r}: expected a list, got {show(value)}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(args[0], v, key) for v in value)
        if len(value) != len(args):
            raise ConfigError(f"config key {key!r}: expected {len(args)} values, got {show(value)}")
        return tuple(_coerce(a, v, key) for a, v in zip(args, value, strict=True))
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"config key {key!r}: expected true or false, got {show(value)}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"config key {key!r}: expected an integer, got {show(value)}")
    if hint is float:
        number = None
        if isinstance(value, int | float) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):  # YAML 1.1 reads "3e-4" (no dot) as a string
            with contextlib.suppress(ValueError):
                number = float(value)
        if number is not None and math.isfinite(number):
            return number
        if number is not None:
            raise ConfigError(f"config key {key!r}: expected a finite number, got {show(value)}")
        raise ConfigError(f"config key {key!r}: expected a number, got {show(value)}")
    if hint is str:
        if isinstance(value, str | int | float) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"config key {key!r}: expected a string, got {show(value)}")
    return value


# Error messages quote a value through `show`, cut to a few items and characters: a YAML value
# built from nested aliases is small in memory, but its full repr can take gigabytes.
_SHORT = reprlib.Repr()
_SHORT.maxlevel, _SHORT.maxlist, _SHORT.maxtuple, _SHORT.maxdict = 2, 3, 3, 3
_SHORT.maxstring, _SHORT.maxlong, _SHORT.maxother = 60, 40, 60


def show(value: Any) -> str:
    """`repr(value)` cut short (at most ~200 characters, built without the full repr)."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 128:
        return f"<an integer of {value.bit_length():,} bits>"  # repr of a huge int is refused
    return _SHORT.repr(value)


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML config file into a dict (an empty file is an empty dict)."""
    path = Path(path)
    check_file(path, ConfigError, "config file not found")
    text = decode_utf8(path.read_bytes(), path, ConfigError)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise ConfigError(
            f"{path}{line}: not valid YAML ({getattr(exc, 'problem', exc)})"
        ) from None
    except (ValueError, RecursionError) as exc:  # an integer of > 4300 digits; nesting too deep
        raise ConfigError(f"{path}: not a usable config ({str(exc)[:120]})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of config keys at the top level")
    return data


def parse_overrides(overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """Turn `["train.lr=3e-4", "model.arch=rnn"]` into a nested dict. Values are parsed as YAML."""
    nested: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. train.lr=3e-4")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except (yaml.YAMLError, ValueError, RecursionError):
            value = raw
        parts = key.strip().split(".")
        node = nested
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {item!r}: {part!r} is both a value and a section")
        node[parts[-1]] = value
    return nested


def merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Recursive dict merge: values of `update` win; sections are merged key by key."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def load_config(
    cls: type[C], path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()
) -> C:
    """Defaults <- YAML file <- `--set` overrides, checked and validated."""
    data = load_yaml(path) if path else {}
    return from_dict(cls, merge(data, parse_overrides(overrides)))


def replace(cfg: C, overrides: list[str] | tuple[str, ...]) -> C:
    """A copy of `cfg` with `--set`-style overrides applied (checked and validated)."""
    return from_dict(type(cfg), merge(to_dict(cfg), parse_overrides(overrides)))


def dump_yaml(cfg: Any) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False, allow_unicode=True)


def diff(a: Any, b: Any, prefix: str = "") -> list[str]:
    """Dotted names of the fields whose values differ between two configs (or their dicts)."""
    da = to_dict(a) if dataclasses.is_dataclass(a) else a
    db = to_dict(b) if dataclasses.is_dataclass(b) else b
    out: list[str] = []
    for key in sorted(set(da) | set(db)):
        va, vb = da.get(key), db.get(key)
        name = f"{prefix}{key}"
        if isinstance(va, dict) and isinstance(vb, dict):
            out.extend(diff(va, vb, name + "."))
        elif va != vb:
            out.append(name)
    return out


def architecture_conflicts(stored: ModelConfig, requested: ModelConfig) -> list[str]:
    """Model fields that differ between a checkpoint's config and a requested one and change the
    architecture (dotted names, `model.` prefix). Regularisation fields may differ, and so may the
    section of an architecture that neither config uses."""
    unused = {"rnn", "transformer"} - {stored.arch, requested.arch}
    return [
        name
        for name in diff(stored, requested, "model.")
        if name not in MODEL_REGULARISATION_FIELDS
        and not any(name.startswith(f"model.{arch}.") for arch in unused)
    ]


def resume_conflicts(stored: RunConfig, requested: RunConfig) -> list[str]:
    """Fields that differ and may not change when resuming a run."""
    return [
        name
        for name in diff(stored, requested)
        if name not in RESUME_SAFE_FIELDS and not name.startswith(RESUME_SAFE_SECTIONS)
    ]
