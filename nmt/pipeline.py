"""The one module that wires data, models, training and decoding together for each command.

`nmt.cli` calls exactly one function here per command; these functions hold no maths of their own.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nmt.config import PrepareConfig, dump_yaml
from nmt.errors import ConfigError, DataError, NmtError
from nmt.io import atomic_dir, write_text

if TYPE_CHECKING:
    from rich.console import Console

    from nmt.data.store import PreparedData
    from nmt.decoding.alignment import AttentionRecord
    from nmt.decoding.beam import Hypothesis

# ---- prepare (issue 2) --------------------------------------------------------------------------

# Heavy libraries (datasets, torch) are imported inside the functions that need them, so that
# `nmt --help` and the commands that do not use them start fast.

SPLIT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
PADDING_REPORT_TOKENS = 4096  # batch size at which stats.json reports the sampler's padding


def prepare(
    cfg: PrepareConfig,
    train: str,
    valid: str,
    tests: dict[str, str],
    out: Path,
    overwrite: bool,
    console: Console | None = None,
) -> PreparedData:
    """Read, clean, tokenize and store a corpus as a prepared directory `out` (see nmt.data.store).

    `train`, `valid` and the values of `tests` (test name -> SPEC) are corpus SPECs (see
    nmt.data.corpus). An existing `out` made from the same inputs and config is reused as it is;
    one made differently is replaced only with `overwrite`. `out` appears only once complete.
    """
    from rich.console import Console

    from nmt.data import corpus, store
    from nmt.data.batching import TokenBatchSampler
    from nmt.data.spm import make_tokenizers

    console = console or Console()
    cfg.validate()
    out = Path(out)
    for name in tests:
        if not SPLIT_NAME.match(name) or name in ("train", "valid"):
            raise ConfigError(
                f"--test {name}=...: a test name uses letters, digits, _ . - and is not "
                "'train' or 'valid'"
            )
    for model in (cfg.spm_model, cfg.spm_tgt_model):
        if model and not Path(model).is_file():
            raise DataError(f"{model}: SentencePiece model to reuse not found")
    roles = {"train": train, "valid": valid, **tests}
    specs = {
        role: corpus.parse_spec(text, cfg.src_lang, cfg.tgt_lang) for role, text in roles.items()
    }
    with console.status("hashing the inputs"):
        inputs = store.describe_inputs(specs)
    key = store.cache_key(cfg, inputs)
    existing = store.check_out_dir(out, key, cfg, inputs, overwrite)
    if existing is not None:
        console.print(
            f"[green]reusing[/] {out}: prepared earlier from the same inputs and config "
            f"(cache key {key[:12]}); pass --overwrite to rebuild it"
        )
        return existing

    started = time.perf_counter()
    with atomic_dir(out) as tmp:
        # Cleaned text goes to Arrow files in a scratch folder (removed before `out` appears) and
        # is memory-mapped from there: no step holds the corpus in memory.
        scratch = tmp / ".text"
        texts, tallies, wheres = _clean_to_arrow(specs, cfg, scratch, console)
        train_text = texts["train"]
        sides = "joint" if cfg.joint_vocab else "separate"
        with console.status(
            f"training SentencePiece ({cfg.model_type}, {cfg.vocab_size:,} pieces, {sides}) "
            f"on {len(train_text):,} training pairs"
        ):
            tokenizers = make_tokenizers(
                cfg,
                store.iter_column(train_text, "src"),
                store.iter_column(train_text, "tgt"),
                tmp,
                wheres["train"],
            )
        src_tok, tgt_tok = tokenizers["src"][1], tokenizers["tgt"][1]
        stats: dict[str, Any] = {}
        for role, text in texts.items():
            # Large splits show datasets' own progress bar; a spinner would fight with it.
            big = len(text) >= store.PROGRESS_BAR_PAIRS
            status = f"encoding {role} ({len(text):,} pairs)"
            with contextlib.nullcontext() if big else console.status(status):
                split = store.write_split(tmp, role, text, src_tok, tgt_tok, cfg.num_proc)
                stats[role] = store.split_stats(split, tallies[role].read, tallies[role].dropped)
            if role == "train":
                lens = store.split_lengths(split)
                sampler = TokenBatchSampler(*lens, PADDING_REPORT_TOKENS, seed=cfg.seed)
                stats[role][f"padding_fraction_{PADDING_REPORT_TOKENS}"] = round(
                    sampler.padding_fraction(0), 4
                )
        del texts, train_text, text
        shutil.rmtree(scratch)
        write_text(tmp / store.CONFIG, dump_yaml(cfg))
        sizes = {role: s["pairs"] for role, s in stats.items()}
        manifest = store.build_manifest(cfg, key, inputs, tokenizers, sizes)
        store.write_manifest(tmp, manifest, stats)
    data = store.load_prepared(out)
    _print_prepared(console, data, stats, time.perf_counter() - started)
    return data


def _clean_to_arrow(
    specs: dict[str, Any], cfg: PrepareConfig, scratch: Path, console: Console
) -> tuple[dict[str, Any], dict[str, Any], dict[str, str]]:
    """Read and clean every role's corpus into an Arrow file under `scratch`, pair by pair.
    Returns role -> memory-mapped text dataset, role -> `Tally`, role -> origin name."""
    from nmt.data import corpus, store

    texts: dict[str, Any] = {}
    tallies: dict[str, corpus.Tally] = {}
    wheres: dict[str, str] = {}
    for role, spec in specs.items():
        with console.status(f"reading {role}: {spec.text}"):
            raw, where = corpus.iter_pairs(spec, cfg, role)
            tally = corpus.Tally()
            cleaned = corpus.clean_stream(raw, cfg, role == "train", tally)
            texts[role] = store.write_text(scratch / f"{role}.arrow", cleaned)
        _check_not_empty(role, len(texts[role]), tally, where)
        console.print(f"read {role:>6}: {_read_summary(len(texts[role]), tally, where)}")
        tallies[role], wheres[role] = tally, where
    return texts, tallies, wheres


def _check_not_empty(role: str, kept: int, tally: Any, where: str) -> None:
    if kept:
        return
    if tally.read == 0:
        raise DataError(f"{where}: no sentence pairs in the {role} corpus")
    reasons = ", ".join(f"{k} {v:,}" for k, v in tally.dropped.items() if v)
    raise DataError(
        f"{where}: no {role} pairs left after filtering (read {tally.read:,}; dropped: "
        f"{reasons}); check the files or loosen min_len / max_len / max_ratio"
    )


def _read_summary(kept: int, tally: Any, where: str) -> str:
    dropped = {k: v for k, v in tally.dropped.items() if v}
    text = f"{tally.read:,} pairs from {where}"
    if dropped:
        reasons = ", ".join(f"{k} {v:,}" for k, v in dropped.items())
        text += f"; kept {kept:,}, dropped {sum(dropped.values()):,} ({reasons})"
    return text


def _print_prepared(
    console: Console, data: PreparedData, stats: dict[str, Any], seconds: float
) -> None:
    from rich.table import Table

    table = Table(title=f"prepared {data.src_lang}-{data.tgt_lang} in {data.path}")
    for column in ("split", "pairs", "dropped", "tokens src/tgt", "p95 len src/tgt"):
        table.add_column(column, justify="left" if column == "split" else "right", no_wrap=True)
    for name, s in stats.items():
        table.add_row(
            name,
            f"{s['pairs']:,}",
            f"{sum(s['dropped'].values()):,}" if s["dropped"] else "-",
            f"{s['src']['tokens']:,} / {s['tgt']['tokens']:,}",
            f"{s['src']['length']['p95']} / {s['tgt']['length']['p95']}",
        )
    console.print(table)
    vocab = (
        f"joint vocabulary of {data.src_vocab_size:,}"
        if data.shared_vocab
        else f"vocabularies {data.src_vocab_size:,} ({data.src_lang}) / "
        f"{data.tgt_vocab_size:,} ({data.tgt_lang})"
    )
    padding = stats["train"][f"padding_fraction_{PADDING_REPORT_TOKENS}"]
    console.print(
        f"{vocab}; padding {padding:.1%} at {PADDING_REPORT_TOKENS:,}-token batches; "
        f"done in {seconds:.1f} s"
    )


# ---- train, average (issue 4) -------------------------------------------------------------------


def train(
    config: Path | None,
    data: Path | None,
    out: Path | None,
    overrides: list[str],
    resume: Path | None = None,
) -> dict[str, Any]:
    """`nmt train`: a new run from CONFIG (+ `--set` overrides) on the prepared `data`, written to
    the run directory `out`; or, with `resume`, that run continued from its last.pt.

    Everything a user can get wrong is checked here, before any rank of a torchrun job writes a
    file: the config, the prepared directory, a run directory that already holds a run, and on
    resume the fields that may not change (listed with their old and new values) and the data hash.
    Returns the summary dict of `nmt.training.loop.train`.
    """
    from nmt.config import RunConfig, load_config, replace, resume_conflicts, to_dict
    from nmt.data.store import load_prepared
    from nmt.errors import CheckpointError
    from nmt.training import checkpoint as ckpt
    from nmt.training.loop import train as run_training

    if resume is not None:
        run_dir = Path(resume)
        if config is not None:
            raise ConfigError(
                "--resume continues a run with its stored config; drop CONFIG and change "
                "resume-safe fields with --set (e.g. --set train.max_steps=...)"
            )
        if out is not None and Path(out).resolve() != run_dir.resolve():
            raise ConfigError("--resume RUN_DIR writes to RUN_DIR; drop --out")
        if not (run_dir / ckpt.LAST).is_file():
            raise CheckpointError(
                f"{run_dir}: nothing to resume (no {ckpt.LAST}); the run saved no checkpoint yet "
                "or this is not a run directory"
            )
        stored = ckpt.read_run_config(run_dir)
        requested = replace(stored, overrides)
        conflicts = resume_conflicts(stored, requested)
        if conflicts:
            old, new = to_dict(stored), to_dict(requested)
            changes = "; ".join(
                f"{name}: {_dotted(old, name)!r} -> {_dotted(new, name)!r}" for name in conflicts
            )
            raise ConfigError(
                f"--resume {run_dir}: these settings differ from the stored run and cannot change "
                f"mid-run: {changes}. Start a new run (with --out) to change them"
            )
        info = ckpt.read_data_info(run_dir)
        data_dir = Path(data) if data is not None else Path(info["path"])
        prepared = load_prepared(data_dir)
        if prepared.hash != info["hash"]:
            raise DataError(
                f"{data_dir}: prepared data differs from the data this run was trained on "
                f"(hash {prepared.hash[:12]}, run {info['hash'][:12]}); resume with the same data"
            )
        return run_training(requested, data_dir, run_dir, resume=True)

    if config is None:
        raise ConfigError("nmt train needs CONFIG.yaml (or --resume RUN_DIR)")
    if data is None:
        raise ConfigError("nmt train CONFIG.yaml needs --data PREPARED_DIR (from `nmt prepare`)")
    cfg = load_config(RunConfig, config, overrides)
    load_prepared(data)  # a missing or broken prepared directory fails here, before any work
    run_dir = Path(out) if out is not None else Path("checkpoints") / f"{Path(config).stem}"
    if run_dir.exists() and (not run_dir.is_dir() or any(run_dir.iterdir())):
        hint = (
            f"continue it with `nmt train --resume {run_dir}`"
            if (run_dir / ckpt.CONFIG_FILE).is_file()
            else "it is not empty"
        )
        raise ConfigError(f"{run_dir}: already exists ({hint}); choose another --out")
    return run_training(cfg, data, run_dir)


def _dotted(tree: dict[str, Any], name: str) -> Any:
    for part in name.split("."):
        tree = tree.get(part) if isinstance(tree, dict) else None  # type: ignore[assignment]
    return tree


def average(run_dir: Path, last: int, out: Path | None) -> tuple[Path, list[int]]:
    """`nmt average`: the mean of the `last` newest periodic checkpoints of `run_dir`, written to
    `out` (default RUN_DIR/averaged.pt) beside the run's tokenizer files. Returns the file and
    the steps averaged."""
    from nmt.training import checkpoint as ckpt

    if last < 1:
        raise ConfigError(f"--last must be >= 1, got {last}")
    return ckpt.average_run(Path(run_dir), last, Path(out) if out is not None else None)


# CTranslate2 weight types (`--quantization`); None keeps float32.
CT2_QUANTIZATIONS = ("int8", "int8_float32", "int8_float16", "int8_bfloat16", "int16", "float16",
                     "bfloat16", "float32")  # fmt: skip


def export(checkpoint: Path, out: Path, fmt: str, quantization: str | None) -> Path:
    """`nmt export`: a trained Transformer as a CTranslate2 model directory `out` (model.bin,
    config.json, vocabularies) with the run's SentencePiece models beside it as source.spm and
    target.spm. Written under a temp name and renamed, so `out` is never half-written."""
    from nmt.models.ctranslate2 import transformer_spec
    from nmt.models.transformer import TransformerModel
    from nmt.training.checkpoint import load_for_inference

    if fmt != "ctranslate2":
        raise ConfigError(f"--format {fmt!r}: the only export format is ctranslate2")
    if quantization is not None and quantization not in CT2_QUANTIZATIONS:
        raise ConfigError(
            f"--quantization {quantization!r}: expected one of {', '.join(CT2_QUANTIZATIONS)}"
        )
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
    with atomic_dir(out) as tmp:
        spec.save(str(tmp))
        (tmp / "source.spm").write_bytes(src_tok.model_bytes)
        (tmp / "target.spm").write_bytes(tgt_tok.model_bytes)
    return out


# ---- translate, evaluate, align-eval, plot (issue 5) --------------------------------------------

# Lines translated together: enough for length-sorted batches, small enough that output streams.
TRANSLATE_CHUNK_LINES = 1000


def resolve_decode_device(name: str) -> Any:
    """--device auto|cpu|cuda -> torch.device; asking for CUDA without a GPU is an error."""
    import torch

    if name not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"--device {name!r}: expected auto, cpu or cuda")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    elif name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA GPU is visible; use --device auto or cpu")
    return torch.device(name)


class Translator:
    """One or more trained models (an ensemble shares one vocabulary) plus the decode settings:
    text lines in, n-best lists and attention records out, in input order.

    Decode settings: the first checkpoint's `decode` section, then `--set decode.key=value`
    overrides, then the named flags. Only `decode.*` may change: the model comes from the
    checkpoint alone.
    """

    def __init__(
        self,
        checkpoints: list[Path],
        overrides: list[str],
        flags: dict[str, Any],
        device: str,
        log: Callable[[str], None],
    ) -> None:
        import torch

        from nmt.config import DecodeConfig, from_dict, merge, parse_overrides, to_dict
        from nmt.decoding.beam import Ensemble
        from nmt.errors import CheckpointError
        from nmt.training.checkpoint import load_for_inference

        if not checkpoints:
            raise ConfigError("give a run directory or checkpoint file (several make an ensemble)")
        nested = parse_overrides(overrides)
        if set(nested) - {"decode"}:
            wrong = ", ".join(sorted(set(nested) - {"decode"}))
            raise ConfigError(
                f"--set {wrong}.*: only decode.* settings can change at translation time; the "
                "model is rebuilt from the checkpoint"
            )
        self.device = resolve_decode_device(device)
        self.log = log
        loaded = [load_for_inference(path, self.device) for path in checkpoints]
        self.models = [model for model, _, _, _ in loaded]
        _, self.run_cfg, self.src_tok, self.tgt_tok = loaded[0]
        for path, (_, _, src_tok, tgt_tok) in zip(checkpoints, loaded, strict=True):
            if (src_tok.sha256, tgt_tok.sha256) != (self.src_tok.sha256, self.tgt_tok.sha256):
                raise CheckpointError(
                    f"{path}: uses other SentencePiece models than {checkpoints[0]}; an ensemble "
                    "needs one shared vocabulary"
                )
        decode = merge(to_dict(self.run_cfg.decode), nested.get("decode", {}))
        decode = merge(decode, {k: v for k, v in flags.items() if v is not None})
        self.cfg: DecodeConfig = from_dict(DecodeConfig, decode, "decode")
        if self.cfg.precision == "bf16":
            # oneDNN's kernel caches stay on: decoding shapes are few (rows x one position) and
            # rebuilding kernels made bf16 greedy search 2.6x slower (bench/NOTES.md).
            self.models = [model.to(torch.bfloat16) for model in self.models]
        # Longest source the models accept: positions for the subwords and the EOS.
        self.max_src_len = Ensemble(self.models).max_positions
        if self.max_src_len is not None:
            self.max_src_len -= 1
        self.arch = self.run_cfg.model.arch
        self.prepare_cfg = _prepare_config_of(checkpoints[0], log)
        names = ", ".join(str(p) for p in checkpoints)
        search = "sampling" if self.cfg.sample else "greedy" if self.cfg.beam_size == 1 else "beam"
        log(
            f"loaded {names} ({self.arch}) on {self.device} ({self.cfg.precision}); {search} "
            f"search, beam {self.cfg.beam_size}, nbest {self.cfg.nbest}"
        )

    def encode(self, lines: list[str], first: int, where: str) -> list[list[int]]:
        """Source ids per line; empty lines give []; too long lines follow decode.too_long."""
        from nmt.data.corpus import clean_text

        # The same normalisation as the training data got (NFKC, spaces, lowercasing).
        ids = self.src_tok.encode_batch([clean_text(line, self.prepare_cfg) for line in lines])
        limit = self.max_src_len
        for n, seq in enumerate(ids):
            if not lines[n].strip():
                ids[n] = []
            elif limit is not None and len(seq) > limit:
                lineno = first + n + 1
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

    def translate(
        self, src_ids: list[list[int]], need_attention: bool = False
    ) -> list[list[Hypothesis]]:
        from nmt.decoding.beam import decode_corpus

        return decode_corpus(self.models, src_ids, self.cfg, self.device, need_attention)

    def detok(self, hyp: Hypothesis) -> str:
        return self.tgt_tok.decode(hyp.tokens)

    def record(self, index: int, src: list[int], hyp: Hypothesis) -> AttentionRecord:
        from nmt.decoding.alignment import make_record

        return make_record(
            index,
            self.src_tok.pieces(src),
            self.tgt_tok.pieces(hyp.tokens),
            hyp.attention,
            self.cfg.attention_layer,
            self.cfg.attention_head,
        )

    def alignment(self, record: AttentionRecord, hyp: Hypothesis) -> list[tuple[int, int]]:
        """Hard word links of the best hypothesis; "all" layers/heads are averaged for them."""
        from nmt.decoding.alignment import hard_alignment, make_record

        words = record.word_matrix
        if words.ndim == 4:
            layer = "mean" if self.cfg.attention_layer == "all" else self.cfg.attention_layer
            head = "mean" if self.cfg.attention_head == "all" else self.cfg.attention_head
            words = make_record(
                record.index, record.src_pieces, record.tgt_pieces, hyp.attention, layer, head
            ).word_matrix
        return hard_alignment(words, self.cfg.align_threshold)


def _prepare_config_of(checkpoint: Path, log: Callable[[str], None]) -> PrepareConfig:
    """The cleaning settings of the data a run was trained on (its prepared directory's manifest,
    found through the run's data.json), so that text to translate is normalised the same way.
    Falls back to the defaults (NFKC, no lowercasing) when that directory is gone."""
    from nmt.config import from_dict
    from nmt.io import read_json

    run_dir = Path(checkpoint) if Path(checkpoint).is_dir() else Path(checkpoint).parent
    try:
        info = read_json(run_dir / "data.json")
        manifest = read_json(Path(info["path"]) / "manifest.json")
        return from_dict(PrepareConfig, manifest["config"])
    except (OSError, ValueError, KeyError, TypeError, NmtError):
        log(
            f"note: the prepared data of {run_dir} was not found; input is normalised with the "
            "default cleaning (NFKC, whitespace; no lowercasing)"
        )
        return PrepareConfig()


def _open_text(path: Path) -> Any:
    """A UTF-8 line reader for a file (.gz allowed); DataError if it is missing."""
    import gzip

    if not path.is_file():
        raise DataError(f"{path}: input file not found")
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8", newline="\n")
    return open(path, encoding="utf-8", newline="\n")


def _chunks(handle: Any, size: int, where: str) -> Iterator[list[str]]:
    """Lines (without their newline) in lists of up to `size`, read lazily."""
    chunk: list[str] = []
    lineno = 0
    try:
        for lineno, line in enumerate(handle, 1):  # noqa: B007 (used in the error below)
            chunk.append(line.rstrip("\r\n"))
            if len(chunk) == size:
                yield chunk
                chunk = []
    except UnicodeDecodeError as exc:
        raise DataError(f"{where}:{lineno + 1}: not UTF-8 text ({exc.reason})") from None
    if chunk:
        yield chunk


def translate(
    checkpoints: list[Path],
    input_path: Path | None = None,
    output_path: Path | None = None,
    overrides: list[str] | None = None,
    flags: dict[str, Any] | None = None,
    device: str = "auto",
    attention_out: Path | None = None,
    alignments_out: Path | None = None,
    plot_dir: Path | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """`nmt translate`: lines from `input_path` (or stdin) to detokenized translations in
    `output_path` (or stdout), in input order, `TRANSLATE_CHUNK_LINES` at a time so that output
    streams. Empty lines stay empty. With nbest > 1 each input line gives nbest lines
    `LINE ||| translation ||| score` (Moses n-best format, LINE counted from 0). Attention of the
    best hypothesis goes to `attention_out` (.npz/.jsonl), hard word alignments to
    `alignments_out` (Pharaoh), heatmaps to `plot_dir/attention_<LINE>.png`. On a terminal
    (stdin a TTY, no input file) it translates line by line as they are typed.
    Returns {"sentences", "tokens", "seconds"}.
    """
    import sys

    from nmt.decoding.alignment import AttentionWriter, write_pharaoh
    from nmt.decoding.plot import plot_attention
    from nmt.io import atomic_open

    log = log or _log_stderr
    flags = flags or {}
    interactive = input_path is None and sys.stdin.isatty()
    for path in (attention_out,):
        if path is not None and Path(path).suffix.lower() not in (".npz", ".jsonl"):
            raise ConfigError(f"--attention-out {path}: the file must end in .npz or .jsonl")
    if input_path is not None and not Path(input_path).is_file():
        raise DataError(f"{input_path}: input file not found")
    translator = Translator(checkpoints, overrides or [], flags, device, log)
    cfg = translator.cfg
    need_attention = bool(attention_out or alignments_out or plot_dir)
    where = str(input_path) if input_path is not None else "<stdin>"
    meta = {
        "arch": translator.arch,
        "attention_layer": cfg.attention_layer,
        "attention_head": cfg.attention_head,
    }
    alignments: list[list[tuple[int, int]]] = []
    count = tokens = 0
    started = time.perf_counter()
    with contextlib.ExitStack() as stack:
        reader = stack.enter_context(_open_text(Path(input_path))) if input_path else sys.stdin
        out = stack.enter_context(atomic_open(output_path)) if output_path else sys.stdout
        writer = None
        if attention_out is not None:
            writer = stack.enter_context(AttentionWriter(attention_out, meta))
        if interactive:
            log("type a sentence and press Enter; Ctrl-D ends")
        for lines in _chunks(reader, 1 if interactive else TRANSLATE_CHUNK_LINES, where):
            src = translator.encode(lines, count, where)
            hyps = translator.translate(src, need_attention)
            for n, nbest in enumerate(hyps):
                index = count + n
                if cfg.nbest > 1:
                    for hyp in nbest:
                        out.write(f"{index} ||| {translator.detok(hyp)} ||| {hyp.score:.4f}\n")
                else:
                    out.write(translator.detok(nbest[0]) + "\n")
                tokens += len(nbest[0].tokens)
                if need_attention:
                    record = translator.record(index, src[n], nbest[0])
                    if writer is not None:
                        writer.write(record)
                    if alignments_out is not None:
                        alignments.append(translator.alignment(record, nbest[0]))
                    if plot_dir is not None and record.word_matrix.size:
                        plot_attention(record, Path(plot_dir) / f"attention_{index}.png")
            out.flush()
            count += len(lines)
    if alignments_out is not None:
        write_pharaoh(alignments_out, alignments)
    seconds = time.perf_counter() - started
    log(f"translated {count:,} lines in {seconds:.1f} s")
    return {"sentences": count, "tokens": tokens, "seconds": seconds}


def _log_stderr(message: str) -> None:
    import sys

    print(message, file=sys.stderr, flush=True)


def parse_test_sets(
    src: Path | None, refs: list[Path], hyp: Path | None, tests: list[str]
) -> dict[str, dict[str, Any]]:
    """The test sets of one `nmt evaluate` call: name -> {"src", "refs", "hyp"} (paths).

    `--src/--ref` (or `--hyp/--ref`) give one set named after the source (or hypothesis) file;
    each `--test NAME=SRC,REF[,REF2...]` adds one more.
    """
    sets: dict[str, dict[str, Any]] = {}
    if src is not None or hyp is not None or refs:
        if not refs:
            raise ConfigError("--ref FILE is needed with --src or --hyp")
        if src is None and hyp is None:
            raise ConfigError("--ref needs --src (to translate) or --hyp (to score a file)")
        first = Path(src if src is not None else hyp)  # type: ignore[arg-type]
        name = first.name.removesuffix(".gz")
        sets[name.rsplit(".", 1)[0] if "." in name else name] = {
            "src": src,
            "refs": list(refs),
            "hyp": hyp,
        }
    for item in tests:
        name, sep, files = item.partition("=")
        parts = [p for p in files.split(",") if p]
        if not sep or not name or len(parts) < 2:
            raise ConfigError(f"--test {item!r}: expected NAME=SRC,REF[,REF2...]")
        if name in sets:
            raise ConfigError(f"--test {item!r}: a test set named {name!r} was given twice")
        sets[name] = {"src": Path(parts[0]), "refs": [Path(p) for p in parts[1:]], "hyp": None}
    if not sets:
        raise ConfigError("nothing to evaluate: give --src FILE --ref FILE, or --test NAME=SRC,REF")
    return sets


def evaluate(
    checkpoints: list[Path],
    sets: dict[str, dict[str, Any]],
    report_path: Path | None = None,
    hyp_out: Path | None = None,
    overrides: list[str] | None = None,
    flags: dict[str, Any] | None = None,
    device: str = "auto",
    tokenize: str | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """`nmt evaluate`: translate each test set's source (or take its --hyp file) and score it with
    sacreBLEU (BLEU + signature, lowercased BLEU, chrF, TER). Every file is checked before any
    translation starts. `hyp_out` is a file for one test set and a folder (NAME.hyp) for several.
    Returns (and writes to `report_path` as JSON) {"models", "decode", "tests": {NAME: ...}}.
    """
    from nmt.config import to_dict
    from nmt.io import write_json, write_text
    from nmt.metrics import corpus_scores, read_lines

    log = log or _log_stderr
    uses_model = any(s["hyp"] is None for s in sets.values())
    if uses_model and not checkpoints:
        raise ConfigError(
            "nmt evaluate needs RUN_DIR_OR_CHECKPOINT to translate --src, or --hyp FILE to score "
            "an existing translation"
        )
    if checkpoints and not uses_model:
        raise ConfigError("--hyp scores an existing file: drop RUN_DIR_OR_CHECKPOINT, or --hyp")
    # Read and check every file first: a typo in the last test set must not cost a translation.
    texts: dict[str, dict[str, Any]] = {}
    for name, files in sets.items():
        refs = [read_lines(r) for r in files["refs"]]
        first = files["hyp"] if files["hyp"] is not None else files["src"]
        lines = read_lines(first)
        for ref_path, ref in zip(files["refs"], refs, strict=True):
            if len(ref) != len(lines):
                raise DataError(
                    f"{ref_path}: {len(ref):,} lines, but {first} has {len(lines):,}; a reference "
                    "needs exactly one line per sentence"
                )
        texts[name] = {"lines": lines, "refs": refs}
    translator = None
    if uses_model:
        translator = Translator(checkpoints, overrides or [], flags or {}, device, log)
    results: dict[str, Any] = {}
    for name, files in sets.items():
        lines, refs = texts[name]["lines"], texts[name]["refs"]
        entry: dict[str, Any] = {
            "src": None if files["src"] is None else str(files["src"]),
            "refs": [str(r) for r in files["refs"]],
        }
        if translator is not None and files["hyp"] is None:
            started = time.perf_counter()
            src_ids = translator.encode(lines, 0, str(files["src"]))
            nbests = translator.translate(src_ids)
            seconds = time.perf_counter() - started
            hyps = [translator.detok(n[0]) for n in nbests]
            out_tokens = sum(len(n[0].tokens) for n in nbests)  # target subwords, EOS not counted
            entry["decode_seconds"] = round(seconds, 3)
            entry["sentences_per_second"] = round(len(hyps) / seconds, 2) if seconds else None
            entry["tokens_per_second"] = round(out_tokens / seconds, 1) if seconds else None
            if hyp_out is not None:
                target = Path(hyp_out) if len(sets) == 1 else Path(hyp_out) / f"{name}.hyp"
                write_text(target, "".join(h + "\n" for h in hyps))
                entry["hyp"] = str(target)
            log(f"{name}: translated {len(hyps):,} sentences in {seconds:.1f} s")
        else:
            hyps = lines
            entry["hyp"] = str(files["hyp"])
        entry.update(corpus_scores(hyps, refs, tokenize))
        results[name] = entry
    report: dict[str, Any] = {"tests": results}
    if translator is not None:
        report = {
            "models": [str(p) for p in checkpoints],
            "arch": translator.arch,
            "device": str(translator.device),
            "decode": to_dict(translator.cfg),
            **report,
        }
    if report_path is not None:
        write_json(report_path, report)
    return report


def print_scores(report: dict[str, Any], console: Console | None = None) -> None:
    """The table `nmt evaluate` prints: one row per test set, then the sacreBLEU signatures."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console(highlight=False)
    table = Table(title="sacreBLEU scores")
    for column in ("test", "sentences", "BLEU", "BLEU (lc)", "chrF", "TER", "sent/s"):
        table.add_column(column, justify="left" if column == "test" else "right", no_wrap=True)
    for name, s in report["tests"].items():
        speed = s.get("sentences_per_second")
        table.add_row(
            name,
            f"{s['sentences']:,}",
            f"{s['bleu']:.2f}",
            f"{s['bleu_lc']:.2f}",
            f"{s['chrf']:.2f}",
            f"{s['ter']:.2f}",
            "-" if speed is None else f"{speed:.1f}",
        )
    console.print(table)
    first = next(iter(report["tests"].values()))
    for key in ("bleu_signature", "bleu_lc_signature", "chrf_signature", "ter_signature"):
        console.print(f"{key.removesuffix('_signature'):>7}: {first[key]}")


def align_eval(gold: Path, hyp: Path, report_path: Path | None = None) -> dict[str, Any]:
    """`nmt align-eval`: AER, precision and recall of Pharaoh `hyp` links against `gold`."""
    from nmt.decoding.alignment import alignment_error_rate, read_pharaoh
    from nmt.io import write_json

    gold_links = read_pharaoh(gold)
    hyp_links = read_pharaoh(hyp)
    if len(gold_links) != len(hyp_links):
        raise DataError(
            f"{hyp}: {len(hyp_links):,} lines, but {gold} has {len(gold_links):,}; one line of "
            "links per sentence is needed in both"
        )
    # Every link of a hypothesis counts as a proposed link, whatever its mark.
    scores = alignment_error_rate([p for _, p in hyp_links], gold_links).to_dict()
    scores.update({"gold": str(gold), "hyp": str(hyp)})
    if report_path is not None:
        write_json(report_path, scores)
    return scores


def plot(
    attention_file: Path, index: int, out: Path, layer: int | None = None, subwords: bool = False
) -> Path:
    """`nmt plot`: the heatmap of sentence `index` (0-based input line) of an attention file."""
    from nmt.decoding.alignment import get_record
    from nmt.decoding.plot import plot_attention

    if Path(out).suffix.lower() != ".png":
        raise ConfigError(f"--out {out}: write a .png file")
    _, record = get_record(attention_file, index)
    return plot_attention(record, out, layer=layer, words=not subwords, title=f"sentence {index}")


# ---- built-in corpora (issue 6) -----------------------------------------------------------------

BUILTIN_CORPORA = ("bible",)


def export_corpus(name: str, out: Path) -> dict[str, int]:
    """Write a corpus that ships with a Python package as plain text pairs under `out`."""
    from nmt.data.bible import export_bible

    if name != "bible":
        raise ConfigError(
            f"unknown corpus {name!r}; built-in corpora: {', '.join(BUILTIN_CORPORA)}"
        )
    return export_bible(out)
