"""`nmt prepare`: read, clean, tokenize and store a corpus as a prepared directory (see
nmt/data/store.py), reused as it is when the inputs and settings have not changed."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from nmt.checkpoint import guard_outputs
from nmt.config import PrepareConfig, dump_yaml
from nmt.data import corpus, store
from nmt.data.spm import make_tokenizers, sample_rows
from nmt.data.store import PreparedData
from nmt.errors import DataError
from nmt.io import (
    Input,
    Output,
    atomic_dir,
    check_file,
    output_problem,
    remove_stale_temps,
    write_text,
)

PADDING_REPORT_TOKENS = 4096  # batch size at which stats.json reports the sampler's padding
PREPARE_KIND = "prepare"  # the command a prepared directory's output marker names


def prepare(
    cfg: PrepareConfig,
    train: str,
    valid: str,
    tests: dict[str, str],
    out: Path,
    overwrite: bool,
    console: Console | None = None,
    config_file: Path | None = None,
) -> PreparedData:
    """Read, clean, tokenize and store a corpus as a prepared directory `out` (see nmt.data.store).

    `train`, `valid` and the values of `tests` (test name -> SPEC) are corpus SPECs (see
    nmt.data.corpus). An existing `out` made from the same inputs and config is reused as it is;
    one made differently is replaced only with `overwrite`. `out` appears only once complete, and
    never holds an input (`config_file`: the --config the settings came from).
    """
    console = console or Console()
    cfg.validate()
    out = Path(out)
    specs = _parse_specs(cfg, train, valid, tests)
    sources = [path for spec in specs.values() for path in spec.paths]
    sources += [Path(model) for model in (cfg.spm_model, cfg.spm_tgt_model) if model]
    read = [Input(path, "the input", tree=path.is_dir()) for path in sources]
    if config_file is not None:
        read.append(Input(Path(config_file), "the --config file"))
    guard_outputs([Output("--out", out, "folder")], read, DataError)
    if overwrite and (out / store.MANIFEST).is_file():
        problem = output_problem(out, PREPARE_KIND, sources)
        if problem:
            raise DataError(problem)  # before hashing: --overwrite replaces only our own output
    with console.status("hashing the inputs"):
        inputs = store.describe_inputs(specs)
    key = store.cache_key(cfg, inputs)
    remove_stale_temps(out)  # left by a killed earlier run (a reuse skips atomic_dir)
    existing = store.check_out_dir(out, key, cfg, inputs, overwrite)
    if existing is not None:
        console.print(
            f"[green]reusing[/] {out}: prepared earlier from the same inputs and config "
            f"(cache key {key[:12]}); pass --overwrite to rebuild it"
        )
        return existing

    started = time.perf_counter()
    with atomic_dir(out, PREPARE_KIND, sources, refused=DataError) as tmp:
        tokenizers, stats, spm_pairs = _build(specs, cfg, tmp, console)
        write_text(tmp / store.CONFIG, dump_yaml(cfg))
        sizes = {role: s["pairs"] for role, s in stats.items()}
        manifest = store.build_manifest(cfg, key, inputs, tokenizers, sizes, spm_pairs)
        store.write_manifest(tmp, manifest, stats)
    data = store.load_prepared(out)
    _print_prepared(console, data, stats, time.perf_counter() - started)
    return data


def _parse_specs(
    cfg: PrepareConfig, train: str, valid: str, tests: dict[str, str]
) -> dict[str, corpus.CorpusSpec]:
    """Role -> corpus SPEC, after checking the test names and the SentencePiece models to reuse."""
    for name in tests:
        corpus.check_test_name(name, f"{name}=...", ("train", "valid"))
    for model in (cfg.spm_model, cfg.spm_tgt_model):
        if model:
            check_file(model, DataError, "SentencePiece model to reuse not found")
    roles = {"train": train, "valid": valid, **tests}
    return {
        role: corpus.parse_spec(text, cfg.src_lang, cfg.tgt_lang) for role, text in roles.items()
    }


def _build(
    specs: dict[str, corpus.CorpusSpec], cfg: PrepareConfig, tmp: Path, console: Console
) -> tuple[dict[str, Any], dict[str, Any], int]:
    """The prepared directory's content, written into `tmp`: returns the tokenizers, the
    statistics of every split and the number of pairs SentencePiece was trained on. Cleaned text
    goes to Arrow files in a scratch folder (removed before `out` appears) and is memory-mapped
    from there: no step holds the corpus in memory."""
    scratch = tmp / ".text"
    texts, tallies, wheres = _clean_to_arrow(specs, cfg, scratch, console)
    tokenizers, spm_pairs = _train_tokenizers(cfg, texts["train"], tmp, wheres["train"], console)
    stats = _encode_splits(texts, tallies, tokenizers, cfg, tmp, console)
    del texts  # the memory-mapped files are let go before their folder is removed
    shutil.rmtree(scratch)
    return tokenizers, stats, spm_pairs


def _train_tokenizers(
    cfg: PrepareConfig, train_text: Any, tmp: Path, where: str, console: Console
) -> tuple[dict[str, Any], int]:
    """The SentencePiece models (trained, or the ones to reuse) and the number of training pairs
    they were trained on: a large corpus is sampled down to spm_max_sentences pairs first."""
    sides = "joint" if cfg.joint_vocab else "separate"
    sample = None if cfg.spm_model else sample_rows(len(train_text), cfg)
    spm_pairs = len(train_text) if sample is None else len(sample)
    with console.status(
        f"training SentencePiece ({cfg.model_type}, {cfg.vocab_size:,} pieces, {sides}) "
        f"on {spm_pairs:,} of {len(train_text):,} training pairs"
    ):
        tokenizers = make_tokenizers(
            cfg,
            store.iter_column(train_text, "src", sample),
            store.iter_column(train_text, "tgt", sample),
            tmp,
            where,
        )
    return tokenizers, spm_pairs


def _encode_splits(
    texts: dict[str, Any],
    tallies: dict[str, Any],
    tokenizers: dict[str, Any],
    cfg: PrepareConfig,
    tmp: Path,
    console: Console,
) -> dict[str, Any]:
    """Every split encoded to ids chunk by chunk, so that memory holds one chunk of pairs
    whatever the corpus size (and the training pairs word-aligned when asked); returns the
    statistics of each, the training split's padding at PADDING_REPORT_TOKENS included."""
    src_tok, tgt_tok = tokenizers["src"][1], tokenizers["tgt"][1]
    stats: dict[str, Any] = {}
    for role, text in texts.items():
        with console.status(f"encoding {role} ({len(text):,} pairs)"):
            tally = store.write_split(tmp, role, text, src_tok, tgt_tok, cfg.num_proc)
            stats[role] = tally.stats(tallies[role].read, tallies[role].dropped)
        if role == "train":
            stats[role][f"padding_fraction_{PADDING_REPORT_TOKENS}"] = round(
                tally.padding_fraction(PADDING_REPORT_TOKENS), 4
            )
        if role == "train" and cfg.alignments == "eflomal":
            with console.status(f"word-aligning {len(text):,} training pairs (eflomal)"):
                store.add_alignments(tmp, role, src_tok, tgt_tok)
    return stats


def _clean_to_arrow(
    specs: dict[str, Any], cfg: PrepareConfig, scratch: Path, console: Console
) -> tuple[dict[str, Any], dict[str, Any], dict[str, str]]:
    """Read and clean every role's corpus into an Arrow file under `scratch`, pair by pair.
    Returns role -> memory-mapped text dataset, role -> `Tally`, role -> origin name."""
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
