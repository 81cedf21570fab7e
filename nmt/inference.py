"""Using a trained model: load a run (or several, as an ensemble) and translate text.

`Translator` is the one object that `nmt translate`, `nmt evaluate`, `nmt export`, the server and
Python programs share:

    from nmt import Translator
    from nmt.inference import TranslateOptions
    t = Translator.load("checkpoints/m30k", beam_size=5)
    t.translate(["Ein Mann fährt Fahrrad ."])             # -> ["A man rides a bike ."]
    r = t.translate_full(lines, TranslateOptions(nbest=3, attention=True))  # one per line

Text is cleaned with the settings stored in the checkpoint (the training data's NFKC, lowercasing,
...), encoded with the run's own SentencePiece model, sorted by length into batches of at most
`decode.batch_tokens` padded source tokens, decoded (nmt/decoding/beam.py) and put back in input
order. Nothing here imports the training package.
"""

from __future__ import annotations

import dataclasses
import math
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
from nmt.data.sentences import Span, cut_long, join_sentences, split_sentences, whole_line
from nmt.data.spm import word_end_flags
from nmt.decoding.alignment import (
    AttentionRecord,
    Link,
    format_pharaoh,
    hard_alignment,
    make_record,
    reduce_attention,
    supervised_head,
)
from nmt.decoding.beam import Ensemble, Hypothesis, decode_corpus, iter_decode_corpus
from nmt.decoding.constraints import (
    MAX_SENTENCE_TERM_PIECES,
    MAX_TERM_PIECES,
    Placement,
    place_terms,
)
from nmt.decoding.forced import force_corpus
from nmt.device import resolve_device, reuse_freed_memory
from nmt.errors import CheckpointError, ConfigError, DataError
from nmt.markup.inline import Aligned
from nmt.models import count_parameters
from nmt.models.quantized import quantize_int8

EOS_PIECE = "</s>"


def set_up_process(threads: int) -> None:
    """A decoding command's process: torch's CPU threads (0 leaves torch's default, one per core;
    on a small shared machine fewer threads than cores answer single sentences faster, README
    "Threads"), and large tensors served from freed memory (`reuse_freed_memory`)."""
    if threads < 0:
        raise ConfigError(f"--threads {threads}: expected a count >= 1, or 0 for torch's default")
    if threads:
        torch.set_num_threads(threads)
    reuse_freed_memory()


@dataclass(frozen=True)
class TranslateOptions:
    """What one call may change, as one object (CTranslate2 passes its options the same way):
    the beam and n-best list (None: the Translator's decode settings), what is computed about
    the attention, and whether lines are translated sentence by sentence (None: decode.split).
    Frozen and hashable, so that the server can decode requests with equal options in one
    call."""

    beam_size: int | None = None
    nbest: int | None = None
    attention: bool = False  # the word attention and the hard alignment of each translation
    # With `attention`, a Transformer's word attention of every decoder layer and head as well
    # (`TranslationResult.layers`, for the server page's selectors).
    attention_detail: bool = False
    split: bool | None = None


DEFAULT_OPTIONS = TranslateOptions()


def check_term_load(
    constraints: list[list[list[int]]], plan: SentencePlan, first_index: int, where: str
) -> None:
    """Refuse a sentence whose glossary terms take more subwords together than the constrained
    search places in bounded time (MAX_SENTENCE_TERM_PIECES)."""
    for unit, terms in enumerate(constraints):
        pieces = sum(len(ids) for ids in terms)
        if pieces > MAX_SENTENCE_TERM_PIECES:
            line = first_index + plan.owners[unit][0] + 1
            raise DataError(
                f"{where}:{line}: the glossary terms found in this sentence take {pieces} "
                f"subwords together; one sentence's terms may take at most "
                f"{MAX_SENTENCE_TERM_PIECES}"
            )


class NonFiniteScores(CheckpointError):
    """The model scored a hypothesis NaN or infinite: its weights are damaged, or the sums
    overflow at its precision. Nothing it translated then can be trusted."""

    def __init__(self, where: str, precision: str) -> None:
        self.reason = (
            f"the model's scores are NaN or infinite ({precision}); its weights are damaged or "
            "overflow at this precision"
        )
        super().__init__(f"{where}: {self.reason}")


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
    - `record`: the attention (subword and word matrices, words) when it was computed; for a
      line of several sentences it is None and each sentence has its own.
    - `src_span` / `tgt_span`: [start, end) characters of the input line that this result
      translates and of the line's translation that it fills.
    - `sentences`: a line's sentences in order (nmt/data/sentences.py), each a result of its
      own; the line's translation joins theirs with the line's spacing. The line's `alignment`
      and word attention count the words of each sentence in turn (the attention is block
      diagonal: a sentence's words attend only to its own source).
    - `terms`: with a glossary, where each glossary term found in the line stands in the
      translation and which source words the attention ties it to; None without a glossary.
      A line's terms count the words of its sentences in turn, as its alignment does.
    - `layers`: with `TranslateOptions.attention_detail`, a Transformer's word attention of
      every decoder layer and head, (L, H, target words, source words): each sentence's, and a
      line's when it is one sentence; `record` then holds the attention the run exports
      (decode.attention_layer / attention_head), named in `reduced_as`.
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
    src_span: Span = (0, 0)
    tgt_span: Span = (0, 0)
    sentences: list[TranslationResult] = field(default_factory=list, repr=False)
    layers: np.ndarray | None = field(default=None, repr=False)
    reduced_as: tuple[str, str] | None = None  # (layer, head) of `record` next to `layers`

    @property
    def src_words(self) -> list[str]:
        if self.record is not None:
            return self.record.src_words
        return [w for s in self.sentences if s.record is not None for w in s.record.src_words]

    @property
    def tgt_words(self) -> list[str]:
        if self.record is not None:
            return self.record.tgt_words
        return [w for s in self.sentences if s.record is not None for w in s.record.tgt_words]

    @property
    def attention(self) -> np.ndarray | None:
        """Word-level attention (target words x source words), or None."""
        if self.record is not None:
            return self.record.word_matrix
        blocks = [s.record.word_matrix for s in self.sentences if s.record is not None]
        return block_diagonal(blocks) if blocks else None

    def aligned(self) -> Aligned:
        """The translation with its words and hard links, for placing markup (nmt/markup/)."""
        return Aligned(self.translation, self.src_words, self.tgt_words, list(self.alignment))

    def to_dict(self, nbest: bool = False, attention: bool = False) -> dict[str, Any]:
        """The JSON form (`--output-format jsonl`, the server): translation, score, tokens,
        token_scores, alignment (Pharaoh), plus nbest and the word-level attention on request,
        the glossary terms of the line when a glossary was used, and `sentences`: the same
        fields for each sentence of the line with its character offsets, src_start/src_end into
        the input line and tgt_start/tgt_end into the translation."""
        row = self._fields(nbest, attention)
        row["sentences"] = [s.sentence_dict(attention) for s in self.sentences]
        return row

    def sentence_dict(self, attention: bool = False) -> dict[str, Any]:
        """One sentence of a line in JSON form: `to_dict`'s fields with its offsets."""
        row = self._fields(False, attention)
        if attention and self.reduced_as is not None:
            row["attention"].update(layer=self.reduced_as[0], head=self.reduced_as[1])
        row.update(src_start=self.src_span[0], src_end=self.src_span[1],
                   tgt_start=self.tgt_span[0], tgt_end=self.tgt_span[1])  # fmt: skip
        return row

    def _fields(self, nbest: bool, attention: bool) -> dict[str, Any]:
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
            if self.layers is not None:
                row["attention"]["layers"] = np.round(self.layers.astype(np.float64), 4).tolist()
        if self.terms is not None:
            row["terms"] = [placement.to_dict() for placement in self.terms]
        return row


def block_diagonal(blocks: Sequence[np.ndarray]) -> np.ndarray:
    """Matrices (..., T_k, S_k) of a line's sentences as one (..., sum T, sum S), zero outside
    the blocks; the leading axes (layers, heads) must agree."""
    lead = blocks[0].shape[:-2]
    rows = sum(b.shape[-2] for b in blocks)
    cols = sum(b.shape[-1] for b in blocks)
    out = np.zeros((*lead, rows, cols), dtype=np.float32)
    r = c = 0
    for b in blocks:
        out[..., r : r + b.shape[-2], c : c + b.shape[-1]] = b
        r, c = r + b.shape[-2], c + b.shape[-1]
    return out


@dataclass
class SentencePlan:
    """How a batch of lines became the sentences that are decoded: each line's sentence spans,
    and per sentence its (line, position in line) and source ids."""

    spans: list[list[Span]]
    owners: list[tuple[int, int]]
    src_ids: list[list[int]]

    @staticmethod
    def joined(plans: Sequence[SentencePlan]) -> SentencePlan:
        """The plans of several batches of lines as one plan of all their lines, in turn."""
        spans: list[list[Span]] = []
        owners: list[tuple[int, int]] = []
        src_ids: list[list[int]] = []
        for plan in plans:
            owners += [(n + len(spans), k) for n, k in plan.owners]
            spans += plan.spans
            src_ids += plan.src_ids
        return SentencePlan(spans, owners, src_ids)


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
        # The languages pick the sentence splitter's rules and how sentences are joined.
        self.src_lang: str | None = first.vocab.get("src_lang")
        self.tgt_lang: str | None = first.vocab.get("tgt_lang")
        self.too_long_sentences = 0  # cut or truncated so far (decode.too_long), for the summary
        self.cleaning = first.cleaning
        self.arch = first.config.model.arch
        # A Transformer trained with guided alignment has one head taught to align: hard
        # alignments come from it, whatever layers and heads the attention export shows.
        self.aligned_head = supervised_head(first.config)
        self.models = [run.model for run in runs]
        self.parameters = sum(count_parameters(m) for m in self.models)  # before quantizing
        if cfg.precision == "bf16":
            # oneDNN's kernel caches stay on: decoding shapes are few (rows x one position) and
            # rebuilding kernels made bf16 greedy search 2.6x slower (bench/NOTES.md).
            self.models = [model.to(torch.bfloat16) for model in self.models]
        elif cfg.precision == "int8":
            if device.type != "cpu":
                raise ConfigError(
                    "decode.precision=int8 is for CPUs (dynamic quantization); on a GPU use bf16"
                )
            self.models = [quantize_int8(model) for model in self.models]
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
        DecodeConfig fields (`beam_size=5`, `batch_tokens=4000`) and win over `overrides`.
        `glossary`: a Glossary or a glossary file (read before the models load).
        """
        if glossary is not None and not isinstance(glossary, Glossary):
            glossary = Glossary.from_file(glossary)
        path_list = [paths] if isinstance(paths, (str, Path)) else list(paths)
        if not path_list:
            raise ConfigError("give a run directory or checkpoint file (several make an ensemble)")
        asked = decode_overrides(overrides)
        torch_device = resolve_device(device)
        runs = [load_run(path, torch_device, log) for path in path_list]
        settings = merge(to_dict(runs[0].config.decode), asked)
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
        options: TranslateOptions = DEFAULT_OPTIONS,
        *,
        first_index: int = 0,
        where: str = "<input>",
        glossary: Glossary | Sequence[Glossary | None] | None = None,
    ) -> list[TranslationResult]:
        """A `TranslationResult` per line, searched with the Translator's decode settings as
        `options` changes them for this call. `first_index` and `where` name the lines in
        warnings and errors (0-based index of the first line, file name). `glossary` replaces
        the translator's own for this call: one for every line, or a list with one (or None) per
        line. With a glossary the attention is computed, to say where each term went
        (`TranslationResult.terms`). With `options.split` (default: decode.split) each line is
        translated sentence by sentence and the translations are joined with the line's
        spacing."""
        found = dict(self._results(lines, options, first_index, where, glossary, early=False))
        return [found[n] for n in range(len(lines))]

    def translate_stream(
        self,
        lines: Sequence[str],
        options: TranslateOptions = DEFAULT_OPTIONS,
        *,
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
        return self._results(lines, options, first_index, where, glossary, early=True)

    def stream_planned(
        self,
        lines: Sequence[str],
        plan: SentencePlan,
        options: TranslateOptions = DEFAULT_OPTIONS,
        glossary: Glossary | Sequence[Glossary | None] | None = None,
    ) -> Iterator[tuple[int, TranslationResult]]:
        """`translate_stream` for lines whose sentences `plan` already holds, encoded (the server
        plans each request once, to weigh it against its batch budget, and decodes that plan)."""
        cfg = self.settings(beam_size=options.beam_size, nbest=options.nbest)
        return self._search(lines, plan, cfg, options, glossary, 0, "<input>", early=True)

    def _results(
        self,
        lines: Sequence[str],
        options: TranslateOptions,
        first_index: int,
        where: str,
        glossary: Glossary | Sequence[Glossary | None] | None,
        early: bool,
    ) -> Iterator[tuple[int, TranslationResult]]:
        """The body of `translate_full` and `translate_stream`: lines and settings checked now,
        (line index, result) pairs as the searches end (`early`: each line as soon as all its
        sentences have ended)."""
        _check_lines(lines)
        cfg = self.settings(beam_size=options.beam_size, nbest=options.nbest)
        split = cfg.split if options.split is None else options.split
        plan = self.plan(lines, split, first_index, where)
        return self._search(lines, plan, cfg, options, glossary, first_index, where, early)

    def _search(
        self,
        lines: Sequence[str],
        plan: SentencePlan,
        cfg: DecodeConfig,
        options: TranslateOptions,
        glossary: Glossary | Sequence[Glossary | None] | None,
        first_index: int,
        where: str,
        early: bool,
    ) -> Iterator[tuple[int, TranslationResult]]:
        matches = self._sentence_terms(lines, plan, glossary, cfg)
        if matches is None:
            searches = iter_decode_corpus(self.models, plan.src_ids, cfg, self.device,
                                          options.attention, early)  # fmt: skip
            return self._gather(lines, plan, searches, cfg, options, first_index, where)
        # Each sentence's target terms are constraints of its search, and each result says
        # where they went (the attention is computed for that).
        constraints = [[self._term_ids[m.term.tgt] for m in found or []] for found in matches]
        check_term_load(constraints, plan, first_index, where)
        searches = iter_decode_corpus(self.models, plan.src_ids, cfg, self.device, True, early,
                                      constraints, self.word_end())  # fmt: skip
        options = dataclasses.replace(options, attention=True)
        return self._gather(lines, plan, searches, cfg, options, first_index, where,
                            (matches, constraints))  # fmt: skip

    def _sentence_terms(
        self,
        lines: Sequence[str],
        plan: SentencePlan,
        glossary: Glossary | Sequence[Glossary | None] | None,
        cfg: DecodeConfig,
    ) -> list[list[TermMatch] | None] | None:
        """The glossary terms found in each sentence of the plan (a line's glossary serves each
        of its sentences); None without any glossary."""
        chosen = self.glossary if glossary is None else glossary
        if chosen is None:
            return None
        if not isinstance(chosen, Glossary):
            per_line = list(chosen)
            if len(per_line) != len(lines):
                raise ConfigError(
                    f"{len(per_line)} glossaries for {len(lines)} lines: give one each"
                )
            chosen = [per_line[n] for n, _ in plan.owners]
        texts = [lines[n][slice(*plan.spans[n][k])] for n, k in plan.owners]
        return self.find_terms(texts, chosen, cfg)

    def _gather(
        self,
        lines: Sequence[str],
        plan: SentencePlan,
        searches: Iterator[tuple[int, list[Hypothesis]]],
        cfg: DecodeConfig,
        options: TranslateOptions,
        first_index: int,
        where: str,
        terms: tuple[list[list[TermMatch] | None], list[list[list[int]]]] | None = None,
    ) -> Iterator[tuple[int, TranslationResult]]:
        """(line index, line result) as soon as every sentence of the line is translated; with
        `terms` (each sentence's glossary matches and their constraint ids) each sentence says
        where its terms went."""
        done: dict[int, dict[int, TranslationResult]] = {}
        for unit, nbest_list in searches:
            n, k = plan.owners[unit]
            sentence = self.result(
                first_index + n, plan.src_ids[unit], nbest_list, cfg, options, where
            )
            if sentence.record is not None:
                sentence.record.sentence = k
            if terms is not None and terms[0][unit] is not None:
                sentence.terms = place_terms(
                    terms[0][unit] or [],
                    terms[1][unit],
                    nbest_list[0].tokens,
                    self.tgt_tok.pieces(nbest_list[0].tokens),
                    sentence.alignment,
                    self._word_end_flags,
                    sentence.src_words,
                )
                self.warn_about_terms(sentence.terms, f"{where}:{first_index + n + 1}")
            got = done.setdefault(n, {})
            got[k] = sentence
            if len(got) == len(plan.spans[n]):
                del done[n]
                yield (
                    n,
                    self.line_result(lines[n], plan.spans[n], [got[i] for i in range(len(got))]),
                )
        if done:  # sentences in = sentences out, checked rather than assumed
            n = min(done)
            raise RuntimeError(
                f"line {first_index + n + 1}: {len(done[n])} of {len(plan.spans[n])} sentences "
                "came back from the search"
            )

    def plan(
        self, lines: Sequence[str], split: bool, first_index: int = 0, where: str = "<input>"
    ) -> SentencePlan:
        """The sentences of `lines` (each line whole without `split`; a blank line is one empty
        sentence) and their source ids. A sentence longer than the model takes follows
        decode.too_long: cut into pieces at word boundaries ("split"), cut short ("truncate"),
        or a DataError naming the line ("error")."""
        _check_text(lines, first_index, where)  # before the splitter reads them
        spans = [(split_sentences(line, self.src_lang) if split else []) or whole_line(line)
                 for line in lines]  # fmt: skip
        texts = [lines[n][a:b] for n, line_spans in enumerate(spans) for a, b in line_spans]
        ids = self._encode_texts(texts)
        limit = self.max_src_len
        if limit is not None and any(len(seq) > limit for seq in ids):
            spans, ids = self._fit(lines, spans, ids, limit, first_index, where)
        owners = [(n, k) for n, line_spans in enumerate(spans) for k in range(len(line_spans))]
        return SentencePlan(spans, owners, ids)

    def _encode_texts(self, texts: Sequence[str]) -> list[list[int]]:
        ids = self.src_tok.encode_batch([clean_text(text, self.cleaning) for text in texts])
        return [seq if text.strip() else [] for seq, text in zip(ids, texts, strict=True)]

    def _fit(
        self,
        lines: Sequence[str],
        spans: list[list[Span]],
        ids: list[list[int]],
        limit: int,
        first_index: int,
        where: str,
    ) -> tuple[list[list[Span]], list[list[int]]]:
        """`plan`'s spans and ids with every sentence over `limit` subwords handled as
        decode.too_long says."""
        policy = self.cfg.too_long
        new_spans: list[list[Span]] = []
        new_ids: list[list[int]] = []
        unit = 0
        for n, line_spans in enumerate(spans):
            kept: list[Span] = []
            for span in line_spans:
                seq = ids[unit]
                unit += 1
                if len(seq) <= limit:
                    kept.append(span)
                    new_ids.append(seq)
                    continue
                lineno = first_index + n + 1
                if policy == "error":
                    raise DataError(
                        f"{where}:{lineno}: a sentence of {len(seq)} subwords, more than the "
                        f"model's maximum of {limit}; shorten it or pass --set "
                        "decode.too_long=split"
                    )
                self.too_long_sentences += 1
                pieces = [span]
                if policy == "split":
                    count = self._count_subwords
                    pieces = cut_long(lines[n], span, count, limit)
                piece_ids = self._encode_texts([lines[n][a:b] for a, b in pieces])
                cut = any(len(p) > limit for p in piece_ids)
                self.log(
                    f"warning: {where}:{lineno}: a sentence of {len(seq)} subwords, more than the "
                    f"model's maximum of {limit}: "
                    + (f"translated in {len(pieces)} pieces cut at word boundaries"
                       if policy == "split" else "its end is cut off (decode.too_long=truncate)")
                    + ("; a word longer than that is cut short" if cut and policy == "split"
                       else "")
                )  # fmt: skip
                kept += pieces
                new_ids += [p[:limit] for p in piece_ids]
            new_spans.append(kept)
        return new_spans, new_ids

    def _count_subwords(self, text: str) -> int:
        return len(self.src_tok.encode_batch([clean_text(text, self.cleaning)])[0])

    def line_result(
        self, line: str, spans: Sequence[Span], sentences: list[TranslationResult]
    ) -> TranslationResult:
        """A line's result from its sentences' (in order): the translations joined with the
        line's own spacing, the scores averaged, log-probs summed, tokens and links in turn."""
        texts = [s.translation for s in sentences]
        text, tgt_spans = join_sentences(line, spans, texts, self.src_lang, self.tgt_lang)
        for sentence, src_span, tgt_span in zip(sentences, spans, tgt_spans, strict=True):
            sentence.src_span, sentence.tgt_span = src_span, tgt_span
        links: list[Link] = []
        src_offset = tgt_offset = 0
        for sentence in sentences:
            links += [(i + src_offset, j + tgt_offset) for i, j in sentence.alignment]
            src_offset += len(sentence.src_words)
            tgt_offset += len(sentence.tgt_words)
        return TranslationResult(
            translation=text,
            score=float(np.mean([s.score for s in sentences])),
            log_prob=sum(s.log_prob for s in sentences),
            tokens=[t for s in sentences for t in s.tokens],
            token_scores=[x for s in sentences for x in s.token_scores],
            nbest=self._joined_nbest(line, spans, sentences),
            alignment=links,
            record=sentences[0].record if len(sentences) == 1 else None,
            layers=sentences[0].layers if len(sentences) == 1 else None,
            terms=_line_terms(sentences),
            src_span=(0, len(line)),
            tgt_span=(0, len(text)),
            sentences=sentences,
        )

    def _joined_nbest(
        self, line: str, spans: Sequence[Span], sentences: Sequence[TranslationResult]
    ) -> list[Candidate]:
        """The line's k-th candidate joins each sentence's k-th (its last when it has fewer);
        its score is the mean of theirs."""
        if len(sentences) == 1:
            return list(sentences[0].nbest)
        out = []
        for k in range(max(len(s.nbest) for s in sentences)):
            picked = [s.nbest[min(k, len(s.nbest) - 1)] for s in sentences]
            text, _ = join_sentences(line, spans, [c.translation for c in picked],
                                     self.src_lang, self.tgt_lang)  # fmt: skip
            out.append(Candidate(text, float(np.mean([c.score for c in picked]))))
        return out

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
        options = TranslateOptions(attention=attention)
        return [
            self.result(first_index + n, src_ids[n], [hyp], self.cfg, options, where)
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
            if len(ids) > MAX_TERM_PIECES:
                shown = term.tgt if len(term.tgt) <= 40 else term.tgt[:40] + "..."
                raise DataError(
                    f"{term.where}: target term {shown!r} is {len(ids)} subwords long; a glossary "
                    f"term may have at most {MAX_TERM_PIECES}"
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
            "parameters": self.parameters,
            "paths": [str(run.checkpoint) for run in self.runs],
            "decode": to_dict(self.cfg),
        }

    # ---- the steps ------------------------------------------------------------------------------

    def encode(self, lines: Sequence[str], first_index: int, where: str) -> list[list[int]]:
        """Source ids per whole line (forced decoding pairs lines, not sentences); empty lines
        give []; a line too long is an error under decode.too_long=error, else truncated. A line
        that is not text (a lone surrogate, a non-str) or longer than MAX_LINE_BYTES is refused,
        naming it, before SentencePiece sees it."""
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
                    f"maximum of {limit} (a line read whole, as --force reads it, is not split)"
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
        options: TranslateOptions,
        where: str = "<input>",
    ) -> TranslationResult:
        if not hyps or not all(math.isfinite(h.score) and math.isfinite(h.log_prob) for h in hyps):
            # A model whose weights are finite can still overflow (fp16), and a NaN score would
            # end up in JSON as NaN, which no JSON reader takes.
            raise NonFiniteScores(f"{where}:{index + 1}", cfg.precision)
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
        if not options.attention:
            return result
        src_pieces = self.src_tok.pieces(src)
        if options.attention_detail and self.arch == "transformer":
            everything = make_record(index, src_pieces, pieces, best.attention, "all", "all")
            result.record, result.layers, result.alignment = self.detail(everything, best, cfg)
            if result.layers is not None:
                result.reduced_as = (cfg.attention_layer, cfg.attention_head)
            return result
        result.record = make_record(
            index, src_pieces, pieces, best.attention, cfg.attention_layer, cfg.attention_head
        )
        result.alignment = self.alignment(result.record, best, cfg, self.aligned_head)
        return result

    def detail(
        self, everything: AttentionRecord, hyp: Hypothesis, cfg: DecodeConfig
    ) -> tuple[AttentionRecord, np.ndarray | None, list[Link]]:
        """From a record of every decoder layer and head, the record of the attention the run
        exports (decode.attention_layer / attention_head), the per-head word matrices
        (L, H, Tw, Sw) and the hard alignment (of the guided head in a run trained with guided
        alignment). Word merging is linear, so reducing the per-head word matrices gives the
        numbers the exported matrix has."""
        layers = everything.word_matrix
        if layers.ndim != 4:  # an empty sentence: nothing was attended
            return everything, None, []
        words = reduce_attention(layers.transpose(2, 0, 1, 3), self.cfg.attention_layer,
                                 self.cfg.attention_head)  # fmt: skip
        if self.aligned_head is not None:
            links = self.alignment(everything, hyp, cfg, self.aligned_head)
        else:
            links = hard_alignment(words, self.cfg.align_threshold)
        return dataclasses.replace(everything, word_matrix=words), layers, links

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


def _line_terms(sentences: Sequence[TranslationResult]) -> list[Placement] | None:
    """The glossary terms of a line's sentences, their word positions counted over the line
    (the words of the sentences before them added, as in the line's alignment); None when no
    sentence had a glossary."""
    if all(s.terms is None for s in sentences):
        return None
    out: list[Placement] = []
    src_offset = tgt_offset = 0
    for sentence in sentences:
        for p in sentence.terms or []:
            match = dataclasses.replace(p.match, first_word=p.match.first_word + src_offset,
                                        last_word=p.match.last_word + src_offset)  # fmt: skip
            tgt = None if p.tgt_words is None else (p.tgt_words[0] + tgt_offset,
                                                     p.tgt_words[1] + tgt_offset)  # fmt: skip
            linked = [i + src_offset for i in p.linked_src_words]
            out.append(dataclasses.replace(p, match=match, tgt_words=tgt, linked_src_words=linked))
        src_offset += len(sentence.src_words)
        tgt_offset += len(sentence.tgt_words)
    return out


def decode_overrides(overrides: Sequence[str]) -> dict[str, Any]:
    """`decode.key=value` strings (`--set`) as a dict of decode settings; ConfigError for any
    other section, since the model is rebuilt from the checkpoint."""
    nested = parse_overrides(list(overrides))
    if set(nested) - {"decode"}:
        wrong = ", ".join(sorted(set(nested) - {"decode"}))
        raise ConfigError(
            f"--set {wrong}.*: only decode.* settings can change at translation time; the "
            "model is rebuilt from the checkpoint"
        )
    return dict(nested.get("decode", {}))


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


__all__ = [
    "Candidate",
    "SentencePlan",
    "TranslateOptions",
    "TranslationResult",
    "Translator",
    "decode_overrides",
    "set_up_process",
]
