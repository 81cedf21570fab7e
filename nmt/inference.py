"""Using a trained model: load a run (or several, as an ensemble) and translate text.

`Translator` is the one object that `nmt translate`, `nmt evaluate`, `nmt export`, the server and
Python programs share:

    from nmt import Translator
    t = Translator.load("checkpoints/m30k", beam_size=5)
    t.translate(["Ein Mann fährt Fahrrad ."])             # -> ["A man rides a bike ."]
    r = t.translate_full(lines, nbest=3, attention=True)  # TranslationResult per line

Text is cleaned with the settings stored in the checkpoint (the training data's NFKC, lowercasing,
...), encoded with the run's own SentencePiece model, sorted by length into batches of at most
`decode.batch_tokens` padded source tokens, decoded (nmt/decoding/beam.py) and put back in input
order. Nothing here imports the training package.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nmt.checkpoint import LoadedRun, load_run
from nmt.config import (
    BOS_ID,
    EOS_ID,
    PAD_ID,
    UNK_ID,
    DecodeConfig,
    from_dict,
    merge,
    parse_overrides,
    to_dict,
)
from nmt.data.corpus import MAX_LINE_BYTES, clean_text
from nmt.data.glossary import Glossary, TermMatch
from nmt.data.spm import word_end_flags
from nmt.decoding.alignment import (
    AttentionRecord,
    Link,
    format_pharaoh,
    hard_alignment,
    make_record,
    supervised_head,
)
from nmt.decoding.beam import Ensemble, Hypothesis, decode_corpus, iter_decode_corpus
from nmt.decoding.constraints import Placement, place_terms
from nmt.decoding.forced import force_corpus
from nmt.errors import CheckpointError, ConfigError, DataError
from nmt.models import count_parameters

EOS_PIECE = "</s>"


def resolve_device(name: str) -> torch.device:
    """auto|cpu|cuda -> torch.device; asking for CUDA without a GPU is an error."""
    if name not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"--device {name!r}: expected auto, cpu or cuda")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    elif name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA GPU is visible; use --device auto or cpu")
    return torch.device(name)


@dataclass
class Candidate:
    """One entry of an n-best list."""

    translation: str
    score: float


@dataclass
class TranslationResult:
    """The translation of one input line and what the model says about it.

    - `score`: the length-normalised log-probability the search ranked by; `log_prob` is the
      plain sum of `token_scores`, one natural-log probability per target piece of `tokens`,
      the final "</s>" included.
    - `nbest`: the n-best list, best first (`nbest[0]` is this translation).
    - `alignment`: hard word links (source word, target word), 0-based, from the attention;
      empty unless attention was computed.
    - `record`: the attention (subword and word matrices, words) when it was computed.
    - `terms`: with a glossary, where each glossary term found in the line stands in the
      translation and which source words the attention ties it to; None without a glossary.
    """

    translation: str
    score: float
    log_prob: float
    tokens: list[str]
    token_scores: list[float]
    nbest: list[Candidate]
    alignment: list[Link] = field(default_factory=list)
    record: AttentionRecord | None = None
    terms: list[Placement] | None = None

    @property
    def src_words(self) -> list[str]:
        return self.record.src_words if self.record is not None else []

    @property
    def tgt_words(self) -> list[str]:
        return self.record.tgt_words if self.record is not None else []

    @property
    def attention(self) -> np.ndarray | None:
        """Word-level attention (target words x source words), or None."""
        return self.record.word_matrix if self.record is not None else None

    def to_dict(self, nbest: bool = False, attention: bool = False) -> dict[str, Any]:
        """The JSON form (`--output-format jsonl`, the server): translation, score, tokens,
        token_scores, alignment (Pharaoh), plus nbest and the word-level attention on request,
        and the glossary terms of the line when a glossary was used."""
        row: dict[str, Any] = {
            "translation": self.translation,
            "score": round(self.score, 6),
            "tokens": self.tokens,
            "token_scores": [round(x, 6) for x in self.token_scores],
            "alignment": format_pharaoh(self.alignment),
        }
        if nbest:
            row["nbest"] = [{"translation": c.translation, "score": round(c.score, 6)}
                            for c in self.nbest]  # fmt: skip
        if attention:
            matrix = self.attention if self.attention is not None else np.zeros((0, 0))
            row["attention"] = {
                "src_words": self.src_words,
                "tgt_words": self.tgt_words,
                "matrix": np.round(matrix.astype(np.float64), 4).tolist(),
            }
        if self.terms is not None:
            row["terms"] = [placement.to_dict() for placement in self.terms]
        return row


class Translator:
    """One or more trained models (an ensemble shares one vocabulary) and the decode settings.

    Decode settings: the first checkpoint's `decode` section, then `overrides`
    (`decode.key=value`), then keyword settings. Only decoding can change; the model comes from
    the checkpoint alone. Not thread-safe: one thread decodes at a time.

    `glossary` (nmt/data/glossary.py): terms whose translation is fixed; the target term of
    every source term found in a line must appear in its translation (lexically constrained
    beam search, nmt/decoding/constraints.py). Each call may give its own.
    """

    def __init__(
        self,
        runs: Sequence[LoadedRun],
        cfg: DecodeConfig,
        device: torch.device,
        log: Callable[[str], None] | None = None,
        glossary: Glossary | None = None,
    ) -> None:
        if not runs:
            raise ConfigError("give a run directory or checkpoint file (several make an ensemble)")
        first = runs[0]
        for run in runs[1:]:
            if (run.src_tok.sha256, run.tgt_tok.sha256) != (first.src_tok.sha256,
                                                            first.tgt_tok.sha256):  # fmt: skip
                raise CheckpointError(
                    f"{run.checkpoint}: uses other SentencePiece models than {first.checkpoint}; "
                    "an ensemble needs one shared vocabulary"
                )
        cfg.validate()
        self.runs = list(runs)
        self.cfg = cfg
        self.device = device
        self.log = log or (lambda message: None)
        self.src_tok, self.tgt_tok = first.src_tok, first.tgt_tok
        self.cleaning = first.cleaning
        self.arch = first.config.model.arch
        # A Transformer trained with guided alignment has one head taught to align: hard
        # alignments come from it, whatever layers and heads the attention export shows.
        self.aligned_head = supervised_head(first.config)
        self.models = [run.model for run in runs]
        if cfg.precision == "bf16":
            # oneDNN's kernel caches stay on: decoding shapes are few (rows x one position) and
            # rebuilding kernels made bf16 greedy search 2.6x slower (bench/NOTES.md).
            self.models = [model.to(torch.bfloat16) for model in self.models]
        # Longest source the models accept: positions for the subwords and the EOS.
        limit = Ensemble(self.models).max_positions
        self.max_src_len = None if limit is None else limit - 1
        self._term_ids: dict[str, list[int]] = {}
        self._word_end: torch.Tensor | None = None
        self._word_end_flags: list[bool] = []
        self.glossary = glossary
        if glossary is not None:
            self.check_glossary(glossary)

    @classmethod
    def load(
        cls,
        paths: str | Path | Sequence[str | Path],
        device: str = "auto",
        overrides: Sequence[str] = (),
        log: Callable[[str], None] | None = None,
        glossary: str | Path | Glossary | None = None,
        **decode: Any,
    ) -> Translator:
        """Load a run directory (its best.pt) or .pt file, or a list of them (an ensemble).

        `overrides` are `decode.key=value` strings (as `--set`); keyword arguments name
        DecodeConfig fields (`beam_size=5`, `batch_tokens=4000`); `beam` is short for beam_size.
        `glossary`: a Glossary or a glossary file (read before the models load).
        """
        if glossary is not None and not isinstance(glossary, Glossary):
            glossary = Glossary.from_file(glossary)
        path_list = [paths] if isinstance(paths, (str, Path)) else list(paths)
        if not path_list:
            raise ConfigError("give a run directory or checkpoint file (several make an ensemble)")
        nested = parse_overrides(list(overrides))
        if set(nested) - {"decode"}:
            wrong = ", ".join(sorted(set(nested) - {"decode"}))
            raise ConfigError(
                f"--set {wrong}.*: only decode.* settings can change at translation time; the "
                "model is rebuilt from the checkpoint"
            )
        if "beam" in decode:
            decode["beam_size"] = decode.pop("beam")
        torch_device = resolve_device(device)
        runs = [load_run(path, torch_device, log) for path in path_list]
        settings = merge(to_dict(runs[0].config.decode), nested.get("decode", {}))
        settings = merge(settings, {k: v for k, v in decode.items() if v is not None})
        cfg: DecodeConfig = from_dict(DecodeConfig, settings, "decode")
        translator = cls(runs, cfg, torch_device, log, glossary)
        names = ", ".join(str(p) for p in path_list)
        if cfg.sample:
            search = f"sampling, {cfg.nbest} sample(s) per line"
        elif cfg.beam_size == 1:
            search = "greedy search"
        else:
            search = f"beam search, beam {cfg.beam_size}, nbest {cfg.nbest}"
        if glossary is not None:
            search += f", glossary of {len(glossary):,} terms (constrained search)"
        translator.log(
            f"loaded {names} ({translator.arch}) on {torch_device} ({cfg.precision}); {search}"
        )
        return translator

    # ---- the simple and the full call ---------------------------------------------------------

    def translate(self, lines: Sequence[str]) -> list[str]:
        """Translations of `lines`, in order; an empty line gives an empty translation."""
        _check_lines(lines)
        return [r.translation for r in self.translate_full(lines)]

    def translate_full(
        self,
        lines: Sequence[str],
        *,
        beam_size: int | None = None,
        nbest: int | None = None,
        attention: bool = False,
        attention_layer: str | None = None,
        attention_head: str | None = None,
        first_index: int = 0,
        where: str = "<input>",
        glossary: Glossary | Sequence[Glossary | None] | None = None,
    ) -> list[TranslationResult]:
        """A `TranslationResult` per line. `beam_size` / `nbest` override the decode settings for
        this call; `attention` computes the attention (word matrix and hard alignment), of the
        Transformer decoder layer / head(s) `attention_layer` / `attention_head` when given
        (as decode.attention_layer / attention_head: an index, "mean" or "all").
        `first_index` and `where` name the lines in warnings and errors (0-based index of the
        first line, file name). `glossary` replaces the translator's own for this call: one for
        every line, or a list with one (or None) per line. With a glossary the attention is
        computed, to say where each term went (`TranslationResult.terms`)."""
        found = dict(
            self._results(
                lines,
                False,
                beam_size,
                nbest,
                attention,
                attention_layer,
                attention_head,
                first_index,
                where,
                glossary,
            )  # fmt: skip
        )
        return [found[n] for n in range(len(lines))]

    def translate_stream(
        self,
        lines: Sequence[str],
        *,
        beam_size: int | None = None,
        nbest: int | None = None,
        attention: bool = False,
        attention_layer: str | None = None,
        attention_head: str | None = None,
        first_index: int = 0,
        where: str = "<input>",
        glossary: Glossary | Sequence[Glossary | None] | None = None,
    ) -> Iterator[tuple[int, TranslationResult]]:
        """As `translate_full`, but yields (line index, result) pairs as the searches end: with
        a beam, each sentence as soon as its own search has, while the rest of its batch goes on
        (greedy search and sampling yield a batch at a time). The server answers requests this
        way, so that a short sentence does not wait for the longest one beside it. The results
        are those `translate_full` gives; bad lines and settings raise here, before the first
        result."""
        return self._results(lines, True, beam_size, nbest, attention, attention_layer,
                             attention_head, first_index, where, glossary)  # fmt: skip

    def _results(
        self,
        lines: Sequence[str],
        early: bool,
        beam_size: int | None,
        nbest: int | None,
        attention: bool,
        attention_layer: str | None,
        attention_head: str | None,
        first_index: int,
        where: str,
        glossary: Glossary | Sequence[Glossary | None] | None,
    ) -> Iterator[tuple[int, TranslationResult]]:
        """The body of `translate_full` and `translate_stream`: lines and settings checked now,
        (line index, result) pairs as the searches end (`early`: each sentence on its own)."""
        _check_lines(lines)
        cfg = self.settings(
            beam_size=beam_size,
            nbest=nbest,
            attention_layer=attention_layer,
            attention_head=attention_head,
        )
        matches = self.find_terms(lines, self.glossary if glossary is None else glossary, cfg)
        src_ids = self.encode(lines, first_index, where)
        if matches is None:
            searches = iter_decode_corpus(self.models, src_ids, cfg, self.device, attention, early)
            return (
                (n, self.result(first_index + n, src_ids[n], nbest_list, cfg, attention))
                for n, nbest_list in searches
            )
        return self._constrained_results(src_ids, matches, early, cfg, first_index, where)

    def _constrained_results(
        self,
        src_ids: list[list[int]],
        matches: list[list[TermMatch] | None],
        early: bool,
        cfg: DecodeConfig,
        first_index: int,
        where: str,
    ) -> Iterator[tuple[int, TranslationResult]]:
        """`_results` with glossary terms: each line's target terms are constraints of its
        search, and each result says where they went (the attention is computed for that)."""
        constraints = [[self._term_ids[m.term.tgt] for m in found or []] for found in matches]
        searches = iter_decode_corpus(
            self.models, src_ids, cfg, self.device, True, early, constraints, self.word_end()
        )
        for n, nbest_list in searches:
            result = self.result(first_index + n, src_ids[n], nbest_list, cfg, True)
            found = matches[n]
            if found is None:  # no glossary for this line
                yield n, result
                continue
            result.terms = place_terms(
                found,
                constraints[n],
                nbest_list[0].tokens,
                self.tgt_tok.pieces(nbest_list[0].tokens),
                result.alignment,
                self._word_end_flags,
                result.src_words,
            )
            self.warn_about_terms(result.terms, f"{where}:{first_index + n + 1}")
            yield n, result

    def score(
        self,
        sources: Sequence[str],
        targets: Sequence[str],
        *,
        attention: bool = False,
        first_index: int = 0,
        where: str = "<input>",
        target_where: str = "<translations>",
    ) -> list[TranslationResult]:
        """Forced decoding (nmt/decoding/forced.py): a `TranslationResult` per (source, target)
        pair for the translation given instead of one searched for: its per-token log-probabilities
        and score (length-normalised as decode.length_norm says; no coverage penalty), and with
        `attention` where the model looks while reading it (the word matrix and hard links, as for
        `translate_full`). `where` / `target_where` name the sources and the translations in
        errors."""
        _check_lines(sources, "Translator.score takes its sources as")
        _check_lines(targets, "Translator.score takes its translations as")
        if len(sources) != len(targets):
            raise DataError(f"{where}: {len(sources)} sources but {len(targets)} translations")
        unpaired = [n for n, (s, t) in enumerate(zip(sources, targets, strict=True))
                    if not s.strip() and t.strip()]  # fmt: skip
        if unpaired:  # most likely the two files are out of step
            self.log(
                f"warning: {where}:{first_index + unpaired[0] + 1}: an empty source line has a "
                f"translation ({len(unpaired)} such line(s) in this batch); are the files paired?"
            )
        src_ids = self.encode(sources, first_index, where)
        _check_text(targets, first_index, target_where)
        tgt_ids = self.tgt_tok.encode_batch([clean_text(t, self.cleaning) for t in targets])
        limit = self.max_src_len
        for n, seq in enumerate(tgt_ids):
            if limit is not None and len(seq) > limit:
                raise DataError(
                    f"{target_where}:{first_index + n + 1}: {len(seq)} subwords, more than the "
                    f"model's maximum of {limit}"
                )
        hyps = force_corpus(self.models, src_ids, tgt_ids, self.cfg, self.device, attention)
        return [
            self.result(first_index + n, src_ids[n], [hyp], self.cfg, attention)
            for n, hyp in enumerate(hyps)
        ]

    # ---- glossaries --------------------------------------------------------------------------

    def check_glossary(self, glossary: Glossary, cfg: DecodeConfig | None = None) -> None:
        """Refuse, before any search, a glossary the search cannot follow: with sampling, or with
        a target term the model's vocabulary cannot spell. Remembers the terms' token ids."""
        if (cfg or self.cfg).sample:
            raise ConfigError(
                "a glossary needs beam search, but decode.sample=true samples; drop one of them"
            )
        for term in glossary.terms:
            if term.tgt in self._term_ids:
                continue
            ids = self.tgt_tok.encode_batch([clean_text(term.tgt, self.cleaning)])[0]
            if UNK_ID in ids:
                raise DataError(
                    f"{term.where}: target term {term.tgt!r} holds characters that the model's "
                    "target vocabulary lacks, so no translation can contain it"
                )
            self._term_ids[term.tgt] = ids

    def word_end(self) -> torch.Tensor:
        """(V,) bool: the target pieces a glossary term may be followed by (and EOS), so that
        a term stands as whole words in the translation (`word_end_flags`)."""
        if self._word_end is None:
            flags = word_end_flags(self.tgt_tok.pieces(range(self.tgt_tok.vocab_size)))
            flags[PAD_ID] = flags[BOS_ID] = flags[UNK_ID] = False
            flags[EOS_ID] = True
            self._word_end, self._word_end_flags = torch.tensor(flags), flags
        return self._word_end

    def find_terms(
        self,
        lines: Sequence[str],
        glossary: Glossary | Sequence[Glossary | None] | None,
        cfg: DecodeConfig,
    ) -> list[list[TermMatch] | None] | None:
        """The glossary terms found in each line (one glossary for all, or one per line; None for
        a line without one), after `check_glossary`; None without any glossary."""
        if glossary is None:
            return None
        per_line = [glossary] * len(lines) if isinstance(glossary, Glossary) else list(glossary)
        if len(per_line) != len(lines):
            raise ConfigError(f"{len(per_line)} glossaries for {len(lines)} lines: give one each")
        for checked in {id(g): g for g in per_line if g is not None}.values():
            self.check_glossary(checked, cfg)
        return [
            None if g is None else g.find(line) for g, line in zip(per_line, lines, strict=True)
        ]

    def warn_about_terms(self, placements: Sequence[Placement], where: str) -> None:
        """A warning for each term missing from its translation, or placed where the attention
        ties it to source words far from its source term (word positions 0-based)."""
        for p in placements:
            term = p.match.term
            name = f"glossary term {term.src!r} -> {term.tgt!r}"
            if p.tgt_words is None:
                self.log(
                    f"warning: {where}: {name} is not in the translation: it cannot be placed "
                    "within the length limit (decode.max_len_a, max_len_b) or its pieces are banned"
                )
            elif p.is_far:
                self.log(
                    f"warning: {where}: {name}: the attention ties target word(s) "
                    f"{p.tgt_words[0]}-{p.tgt_words[1]} to source word(s) {p.linked_src_words}, "
                    f"{p.distance} words from the source term ({p.match.first_word}-"
                    f"{p.match.last_word}); the term may stand in the wrong place"
                )

    def settings(self, **changes: Any) -> DecodeConfig:
        """The decode settings with `changes` (None values ignored), validated."""
        changes = {k: v for k, v in changes.items() if v is not None}
        if not changes:
            return self.cfg
        cfg: DecodeConfig = from_dict(DecodeConfig, merge(to_dict(self.cfg), changes), "decode")
        return cfg

    def info(self) -> dict[str, Any]:
        """What a model listing shows: name, languages, architecture, parameter count."""
        first = self.runs[0]
        return {
            "name": first.checkpoint.parent.name,
            "src_lang": first.vocab.get("src_lang"),
            "tgt_lang": first.vocab.get("tgt_lang"),
            "arch": self.arch,
            "parameters": sum(count_parameters(m) for m in self.models),
            "paths": [str(run.checkpoint) for run in self.runs],
            "decode": to_dict(self.cfg),
        }

    # ---- the steps ------------------------------------------------------------------------------

    def encode(self, lines: Sequence[str], first_index: int, where: str) -> list[list[int]]:
        """Source ids per line; empty lines give []; too long lines follow decode.too_long.
        A line that is not text (a lone surrogate, a non-str) or longer than MAX_LINE_BYTES is
        refused, naming it, before SentencePiece sees it."""
        _check_text(lines, first_index, where)
        ids = self.src_tok.encode_batch([clean_text(line, self.cleaning) for line in lines])
        limit = self.max_src_len
        for n, seq in enumerate(ids):
            if not lines[n].strip():
                ids[n] = []
            elif limit is not None and len(seq) > limit:
                lineno = first_index + n + 1
                if self.cfg.too_long == "error":
                    raise DataError(
                        f"{where}:{lineno}: {len(seq)} subwords, more than the model's maximum of "
                        f"{limit}; shorten the line or pass --set decode.too_long=truncate"
                    )
                self.log(
                    f"warning: {where}:{lineno}: {len(seq)} subwords, truncated to the model's "
                    f"maximum of {limit} (decode.too_long=truncate)"
                )
                ids[n] = seq[:limit]
        return ids

    def decode(
        self,
        src_ids: Sequence[Sequence[int]],
        cfg: DecodeConfig | None = None,
        attention: bool = False,
    ) -> list[list[Hypothesis]]:
        """The search alone (nmt/decoding/beam.py): n-best hypotheses per source in input order."""
        return decode_corpus(self.models, src_ids, cfg or self.cfg, self.device, attention)

    def result(
        self,
        index: int,
        src: list[int],
        hyps: list[Hypothesis],
        cfg: DecodeConfig,
        attention: bool,
    ) -> TranslationResult:
        best = hyps[0]
        pieces = self.tgt_tok.pieces(best.tokens)
        nbest = [Candidate(self.tgt_tok.decode(h.tokens), h.score) for h in hyps]
        result = TranslationResult(
            translation=nbest[0].translation,
            score=best.score,
            log_prob=best.log_prob,
            tokens=pieces + [EOS_PIECE] if best.token_scores else pieces,
            token_scores=list(best.token_scores),
            nbest=nbest,
        )
        if attention:
            result.record = make_record(
                index,
                self.src_tok.pieces(src),
                pieces,
                best.attention,
                cfg.attention_layer,
                cfg.attention_head,
            )
            result.alignment = self.alignment(result.record, best, cfg, self.aligned_head)
        return result

    @staticmethod
    def alignment(
        record: AttentionRecord,
        hyp: Hypothesis,
        cfg: DecodeConfig,
        supervised: tuple[str, str] | None = None,
    ) -> list[Link]:
        """Hard word links of a hypothesis: from (layer, head) `supervised` when given (the head
        guided alignment trained), else from the exported matrix, "all" layers/heads averaged."""
        words = record.word_matrix
        if supervised is not None:
            words = make_record(
                record.index, record.src_pieces, record.tgt_pieces, hyp.attention, *supervised
            ).word_matrix
        elif words.ndim == 4:
            layer = "mean" if cfg.attention_layer == "all" else cfg.attention_layer
            head = "mean" if cfg.attention_head == "all" else cfg.attention_head
            words = make_record(
                record.index, record.src_pieces, record.tgt_pieces, hyp.attention, layer, head
            ).word_matrix
        return hard_alignment(words, cfg.align_threshold)


def _check_lines(lines: Sequence[str], what: str = "Translator.translate takes") -> None:
    """A str is a sequence of characters too: refuse it rather than translate each letter."""
    if isinstance(lines, str):
        raise TypeError(f"{what} a list of lines, not a str: use [text]")


def _check_text(lines: Sequence[str], first_index: int, where: str) -> None:
    """Each line is a str that UTF-8 can hold (no lone surrogate such as "\\ud800", which
    SentencePiece would refuse with a bare TypeError) of at most MAX_LINE_BYTES."""
    for n, line in enumerate(lines):
        name = f"{where}:{first_index + n + 1}"
        if not isinstance(line, str):
            raise TypeError(f"{name}: a line must be a str, got {type(line).__name__}")
        size = len(line)  # a lower bound of its UTF-8 size: no need to encode a huge line
        if size <= MAX_LINE_BYTES:
            try:
                size = len(line.encode("utf-8"))
            except UnicodeEncodeError as exc:
                raise DataError(
                    f"{name}: not valid Unicode (lone surrogate U+{ord(line[exc.start]):04X} at "
                    f"character {exc.start + 1}); pass text decoded from UTF-8"
                ) from None
        if size > MAX_LINE_BYTES:
            raise DataError(
                f"{name}: a line longer than {MAX_LINE_BYTES:,} bytes, the limit for one sentence"
            )


__all__ = ["Candidate", "TranslationResult", "Translator", "resolve_device"]
