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

from nmt.config import PrepareConfig, dump_yaml, parse_overrides
from nmt.errors import ConfigError, DataError
from nmt.io import (
    Input,
    Output,
    atomic_dir,
    atomic_open,
    output_problem,
    remove_stale_temps,
    write_text,
)

if TYPE_CHECKING:
    from rich.console import Console

    from nmt.config import RunConfig
    from nmt.data.store import PreparedData

# ---- prepare (issue 2) --------------------------------------------------------------------------

# Heavy libraries (datasets, torch) are imported inside the functions that need them, so that
# `nmt --help` and the commands that do not use them start fast.

SPLIT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
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
    from rich.console import Console

    from nmt.checkpoint import guard_outputs
    from nmt.data import corpus, store
    from nmt.data.spm import make_tokenizers, sample_rows

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
        # Cleaned text goes to Arrow files in a scratch folder (removed before `out` appears) and
        # is memory-mapped from there: no step holds the corpus in memory.
        scratch = tmp / ".text"
        texts, tallies, wheres = _clean_to_arrow(specs, cfg, scratch, console)
        train_text = texts["train"]
        sides = "joint" if cfg.joint_vocab else "separate"
        # A large corpus is sampled down to spm_max_sentences sentences before training.
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
                wheres["train"],
            )
        src_tok, tgt_tok = tokenizers["src"][1], tokenizers["tgt"][1]
        stats: dict[str, Any] = {}
        for role, text in texts.items():
            # Encoded chunk by chunk: memory holds one chunk of pairs, whatever the corpus size.
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
        del texts, train_text, text
        shutil.rmtree(scratch)
        write_text(tmp / store.CONFIG, dump_yaml(cfg))
        sizes = {role: s["pairs"] for role, s in stats.items()}
        manifest = store.build_manifest(cfg, key, inputs, tokenizers, sizes, spm_pairs)
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
    init: Path | None = None,
) -> dict[str, Any]:
    """`nmt train`: a new run from CONFIG (+ `--set` overrides) on the prepared `data`, written to
    the run directory `out`; or, with `resume`, that run continued from its last.pt. With `init`
    (or `train.init` in CONFIG) the new run's weights start from that run or checkpoint
    (fine-tuning, nmt/training/finetune.py).

    Everything a user can get wrong is checked here, before any rank of a torchrun job writes a
    file: the config, the prepared directory, a run directory that already holds a run, and on
    resume the fields that may not change (listed with their old and new values) and the data hash.
    Returns the summary dict of `nmt.training.loop.train`.
    """
    from nmt import checkpoint as ckpt
    from nmt.checkpoint import guard_outputs
    from nmt.config import RunConfig, load_config, replace, resume_conflicts, to_dict
    from nmt.data.store import load_prepared
    from nmt.errors import CheckpointError
    from nmt.training.finetune import check_vocabulary
    from nmt.training.loop import train as run_training
    from nmt.training.run_folder import check_unlocked

    if resume is not None:
        run_dir = Path(resume)
        if init is not None:
            raise ConfigError("--init starts a new run and --resume continues one; give one")
        if config is not None:
            raise ConfigError(
                "--resume continues a run with its stored config; drop CONFIG and change "
                "resume-safe fields with --set (e.g. --set train.max_steps=...)"
            )
        if out is not None and Path(out).resolve() != run_dir.resolve():
            raise ConfigError("--resume RUN_DIR writes to RUN_DIR; drop --out")
        check_unlocked(run_dir)  # another `nmt train` writing it: refused with its PID
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
        guard_outputs([Output("--resume", run_dir, "folder")], _data_input(data_dir), ConfigError)
        prepared = load_prepared(data_dir)
        if prepared.hash != info["hash"]:
            raise DataError(
                f"{data_dir}: prepared data differs from the data this run was trained on "
                f"(hash {prepared.hash[:12]}, run {info['hash'][:12]}); resume with the same data"
            )
        return run_training(requested, data_dir, run_dir, resume=True)

    if config is None and init is None:
        raise ConfigError("nmt train needs CONFIG.yaml (or --resume RUN_DIR, or --init RUN)")
    if data is None:
        raise ConfigError("nmt train CONFIG.yaml needs --data PREPARED_DIR (from `nmt prepare`)")
    if config is None and out is None:
        raise ConfigError("nmt train --init without CONFIG needs --out NEW_RUN_DIR")
    if init is None and config is not None:
        cfg = load_config(RunConfig, config, overrides)
        init = Path(cfg.train.init) if cfg.train.init else None  # a fine-tuning run's config
    run_dir = Path(out) if out is not None else Path("checkpoints") / f"{Path(str(config)).stem}"
    inputs = _data_input(data) + ([Input(Path(config), "CONFIG")] if config is not None else [])
    if init is not None:
        inputs += ckpt.run_inputs(init)
    guard_outputs([Output("--out", run_dir, "folder")], inputs, ConfigError)
    if init is not None:
        cfg, init_payload = _finetune_config(config, overrides, Path(init))
    prepared = load_prepared(data)  # a missing or broken prepared directory fails here
    if init is not None:
        check_vocabulary(init_payload, prepared, Path(cfg.train.init))
    if run_dir.is_dir():
        check_unlocked(run_dir)
    if run_dir.exists() and (not run_dir.is_dir() or any(run_dir.iterdir())):
        hint = (
            f"continue it with `nmt train --resume {run_dir}`"
            if (run_dir / ckpt.LAST).is_file()
            else "a run killed before its first checkpoint: nothing to resume; remove it to start "
            "again"
            if all((run_dir / name).is_file() for name in (ckpt.CONFIG_FILE, ckpt.DATA_FILE))
            else "it is not empty"
        )
        raise ConfigError(f"{run_dir}: already exists ({hint}); choose another --out")
    return run_training(cfg, data, run_dir)


def _data_input(data: Path) -> list[Input]:
    """A prepared data folder as an input: read whole, so no output may lie inside it."""
    return [Input(Path(data), "the prepared data folder --data", tree=True)]


def _finetune_config(
    config: Path | None, overrides: list[str], init: Path
) -> tuple[RunConfig, dict[str, Any]]:
    """The RunConfig of a fine-tuning run and the payload of its init checkpoint.

    The model section comes from CONFIG, or from the checkpoint when CONFIG has none; without
    CONFIG everything does (except the checkpoint's own init and freeze). `--set` applies on top,
    and train.init / train.init_sha256 record the checkpoint file. Raises ConfigError when the
    model section describes another architecture than the checkpoint's.
    """
    from nmt import checkpoint as ckpt
    from nmt.config import RunConfig, from_dict, load_yaml, merge, parse_overrides, to_dict
    from nmt.training import finetune

    path, why = finetune.resolve_init(init)
    payload = ckpt.load_checkpoint(path)
    stored = ckpt.config_from_payload(payload, path)
    if config is not None:
        base = load_yaml(config)
        base.setdefault("model", to_dict(stored.model))
    else:
        base = to_dict(stored)
        for key in ("init", "init_sha256", "freeze"):
            base["train"].pop(key, None)
    sha = ckpt.sha256_file(path)
    record = {"train": {"init": str(path.resolve()), "init_sha256": sha}}
    cfg = from_dict(RunConfig, merge(merge(base, parse_overrides(overrides)), record))
    finetune.check_architecture(stored.model, cfg.model, path)
    _log_stderr(f"fine-tuning: weights from {why}, sha256 {sha[:12]}...")
    return cfg, payload


def _dotted(tree: dict[str, Any], name: str) -> Any:
    for part in name.split("."):
        tree = tree.get(part) if isinstance(tree, dict) else None  # type: ignore[assignment]
    return tree


def average(run_dir: Path, last: int, out: Path | None) -> tuple[Path, list[int]]:
    """`nmt average`: the mean of the `last` newest periodic checkpoints of `run_dir`, written to
    `out` (default RUN_DIR/averaged.pt) beside the run's tokenizer files. Returns the file and
    the steps averaged."""
    from nmt.checkpoint import AVERAGED, guard_outputs, run_inputs
    from nmt.training import checkpoint as saving

    if last < 1:
        raise ConfigError(f"--last must be >= 1, got {last}")
    target = Path(out) if out is not None else Path(run_dir) / AVERAGED
    # averaged.pt is the one file of a run that `nmt average` writes (replacing only an average).
    skip = (AVERAGED,)
    guard_outputs([Output("--out", target)], run_inputs(run_dir, skip), ConfigError, skip)
    return saving.average_run(Path(run_dir), last, Path(out) if out is not None else None)


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
    from nmt.checkpoint import guard_outputs, load_for_inference
    from nmt.io import write_json
    from nmt.models.ctranslate2 import DECODING_FILE, transformer_spec, translate_options
    from nmt.models.transformer import TransformerModel

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
        (log or _log_stderr)(f"note: CTranslate2 will decode differently: {difference}")
    return out


# ---- translate, evaluate, align-eval, plot (issue 5) --------------------------------------------

OUTPUT_FORMATS = ("text", "jsonl")
INPUT_FORMATS = ("text", "jsonl")


def check_output_path(path: Path, flag: str) -> None:
    """Refuse, before any work, an output that cannot be written as a file (`check_output_file`:
    a directory, a path under a regular file, an unwritable folder). Whether it is one of the
    command's inputs is `check_outputs`' question."""
    from nmt.io import check_output_file

    path = Path(path)
    try:
        check_output_file(path)
    except IsADirectoryError:
        raise ConfigError(f"{flag} {path}: is a directory; give a file name") from None
    except OSError as exc:
        raise ConfigError(
            f"{flag} {path}: cannot be written ({exc.filename}: {exc.strerror})"
        ) from None


def model_inputs(checkpoints: list[Path]) -> list[Input]:
    """What a command that loads `checkpoints` reads, now or later: their run folders' files."""
    from nmt.checkpoint import run_inputs

    return [source for path in checkpoints for source in run_inputs(path)]


def _given(*pairs: tuple[str, Path | None]) -> list[tuple[str, Path]]:
    """The (flag, path) pairs whose path was given."""
    return [(flag, Path(path)) for flag, path in pairs if path is not None]


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
    output_format: str = "text",
    with_attention: bool = False,
    force_path: Path | None = None,
    glossary_path: Path | None = None,
    input_format: str = "text",
    doc_format: str | None = None,
    threads: int = 0,
) -> dict[str, Any]:
    """`nmt translate`: lines from `input_path` (or stdin) to translations in `output_path` (or
    stdout), in input order. Empty lines stay empty. With `force_path` (a file with one
    translation per input line) nothing is searched: the model reads those translations (forced
    decoding) and every output describes them.

    Text output: one translation per line; with nbest > 1, nbest lines `LINE ||| translation |||
    score` per input line (Moses n-best format, LINE counted from 0). JSONL output: one object
    per line (`TranslationResult.to_dict`: translation, score, tokens, token_scores, alignment;
    nbest when nbest > 1; the word attention with `with_attention`). Attention of the best
    hypothesis goes to `attention_out` (.npz/.jsonl), hard word alignments to `alignments_out`
    (Pharaoh), heatmaps to `plot_dir/attention_<LINE>.png`. With `glossary_path` (a glossary
    file, nmt/data/glossary.py) the target term of every source term found in a line must appear
    in its translation; JSONL rows then say where each term went ("terms"). `input_format`
    "jsonl" reads one {"text": ..., "glossary": {source term: target term}} object per line
    (nmt/data/textio.py): the line's terms join the glossary file's for that line.

    Each line is split into sentences unless decode.split is false (`--no-split`); the
    translations are joined with the line's spacing, one output line per input line.
    Attention files hold one record per sentence, Pharaoh alignments one line per input line
    (the words of its sentences counted in turn). A Markdown or HTML document (`doc_format`, or
    the input's extension: nmt/markup/document.py) goes to `translate_document` instead.

    A file is checked whole (UTF-8, gzip) before the model loads and then read in chunks; stdin
    (a pipe or a terminal) is answered in micro-batches as lines arrive, flushed after each.
    `threads` > 0 sets torch's CPU threads. Returns {"lines", "sentences", "tokens", "seconds"}.
    """
    import sys

    from nmt.checkpoint import guard_outputs
    from nmt.data import textio
    from nmt.data.corpus import open_binary
    from nmt.data.glossary import Glossary
    from nmt.inference import Translator, set_threads
    from nmt.markup.document import document_format

    log = log or _log_stderr
    if output_format not in OUTPUT_FORMATS:
        raise ConfigError(f"--output-format {output_format!r}: expected text or jsonl")
    if input_format not in INPUT_FORMATS:
        raise ConfigError(f"--input-format {input_format!r}: expected text or jsonl")
    if input_format == "jsonl" and force_path is not None:
        raise ConfigError("--force pairs plain lines with translations: use --input-format text")
    if with_attention and output_format != "jsonl":
        raise ConfigError("--attention adds the attention matrix to JSONL rows: use it with "
                          "--output-format jsonl (or --attention-out FILE)")  # fmt: skip
    if attention_out is not None and Path(attention_out).suffix.lower() not in (".npz", ".jsonl"):
        raise ConfigError(f"--attention-out {attention_out}: the file must end in .npz or .jsonl")
    files = _given(("-o", output_path), ("--attention-out", attention_out),
                   ("--alignments-out", alignments_out))  # fmt: skip
    for flag, path in files:
        check_output_path(path, flag)
    if plot_dir is not None and Path(plot_dir).exists() and not Path(plot_dir).is_dir():
        raise ConfigError(f"--plot-dir {plot_dir}: is a file; give a folder")
    outputs = [Output(flag, path) for flag, path in files]
    if plot_dir is not None:
        outputs.append(Output("--plot-dir", Path(plot_dir), "files", "attention_*.png"))
    given = _given(("-i", input_path), ("--force", force_path), ("--glossary", glossary_path))
    inputs = [Input(path, flag) for flag, path in given]
    guard_outputs(outputs, inputs + model_inputs(checkpoints), ConfigError)
    fmt = document_format(input_path, doc_format)
    if fmt != "text":
        exports = {"--attention-out": attention_out, "--alignments-out": alignments_out,
                   "--plot-dir": plot_dir, "--force": force_path}  # fmt: skip
        refused = [flag for flag, value in exports.items() if value is not None]
        if input_format != "text":
            refused.append(f"--input-format {input_format}")
        if refused or output_format != "text" or with_attention:
            what = refused[0] if refused else "--output-format jsonl / --attention"
            raise ConfigError(f"{what}: works on plain text; a {fmt} document is written whole")
        glossary = Glossary.from_file(glossary_path) if glossary_path is not None else None
        return translate_document(checkpoints, input_path, output_path, fmt, overrides, flags,
                                  device, log, threads, glossary)  # fmt: skip
    if force_path is not None and input_path is None:
        raise ConfigError("--force pairs translations with the lines of a file: give it with -i")
    if force_path is not None and glossary_path is not None:
        raise ConfigError("--force reads given translations and searches none: drop --glossary")
    glossary = Glossary.from_file(glossary_path) if glossary_path is not None else None
    if force_path is not None:
        asked = {**parse_overrides(list(overrides or [])).get("decode", {}), **(flags or {})}
        if (asked.get("nbest") or 1) > 1 or asked.get("sample") in (True, "true", "True"):
            raise ConfigError(FORCE_ONE_TRANSLATION)
    forced: Iterator[list[str]] | None = None
    sources = 0  # lines of a regular input file, for the progress bar
    for flag, path in _given(("-i", input_path), ("--force", force_path)):
        if force_path is not None and textio.is_stream(path):
            raise ConfigError(
                f"{flag} {path}: is a pipe or device, read once; --force reads both files "
                "twice (counted, then paired): give regular files"
            )
    if input_path is not None and textio.is_stream(Path(input_path)):
        # A pipe, FIFO or <(process substitution) can be read only once: answered as it comes.
        batches = textio.micro_batches(open_binary(Path(input_path)), str(input_path))
        where = str(input_path)
    elif input_path is not None:
        sources = textio.check_text_file(Path(input_path), jsonl=input_format == "jsonl")
        if force_path is not None:
            forced = forced_translations(Path(force_path), sources, Path(input_path))
        batches = textio.file_chunks(Path(input_path))
        where = str(input_path)
    else:
        batches = textio.micro_batches(textio.stdin_binary(sys.stdin))
        where = "<stdin>"
    set_threads(threads)
    translator = Translator.load(
        checkpoints, device, overrides or [], log, glossary=glossary, **(flags or {})
    )
    if forced is not None and (translator.cfg.nbest > 1 or translator.cfg.sample):
        raise ConfigError(FORCE_ONE_TRANSLATION)  # the run's own decode settings ask for them
    if forced is not None:
        log(f"forced decoding: no search; the translations are read from {force_path}")
    writer = TranslationWriter(translator, output_format, with_attention, output_path)
    need_attention = bool(attention_out or alignments_out or plot_dir or output_format == "jsonl")
    if input_path is None and sys.stdin is not None and sys.stdin.isatty():
        log("type a sentence and press Enter; Ctrl-D ends")
    started = time.perf_counter()
    total = sources if input_path is not None and (output_path or not sys.stdout.isatty()) else 0
    with contextlib.ExitStack() as stack:
        out = stack.enter_context(atomic_open(output_path)) if output_path else sys.stdout
        sinks = stack.enter_context(
            AttentionSinks(translator, attention_out, alignments_out, plot_dir)
        )
        advance = stack.enter_context(progress_bar(total, "translating"))
        for lines in batches:
            line_glossaries = None
            if input_format == "jsonl":
                lines, line_glossaries = jsonl_requests(lines, where, writer.count, glossary)
            if forced is not None:
                results = translator.score(lines, next(forced), attention=need_attention,
                                           first_index=writer.count, where=where,
                                           target_where=str(force_path))  # fmt: skip
            else:
                results = translator.translate_full(
                    lines,
                    attention=need_attention,
                    first_index=writer.count,
                    where=where,
                    glossary=line_glossaries,
                )
            writer.write(out, results)
            sinks.write(results)
            writer.flush(out)
            advance(len(lines))
    seconds = time.perf_counter() - started
    done = "read" if forced is not None else "translated"
    split = f" ({writer.sentences:,} sentences)" if writer.sentences != writer.count else ""
    log(f"{done} {writer.count:,} lines{split} in {seconds:.1f} s")
    _log_too_long(translator, log)
    return {"lines": writer.count, "sentences": writer.sentences, "tokens": writer.tokens,
            "seconds": seconds}  # fmt: skip


TOO_LONG_DONE = {"split": "translated in pieces cut at word boundaries",
                 "truncate": "cut short (decode.too_long=truncate)"}  # fmt: skip


def _log_too_long(translator: Any, log: Callable[[str], None]) -> None:
    """The count of sentences longer than the model takes, after the per-line warnings."""
    count = translator.too_long_sentences
    if count:
        how = TOO_LONG_DONE[translator.cfg.too_long]
        log(f"{count:,} sentence(s) longer than the model's maximum of {translator.max_src_len} "
            f"subwords: {how}")  # fmt: skip


def translate_document(
    checkpoints: list[Path],
    input_path: Path | None,
    output_path: Path | None,
    fmt: str,
    overrides: list[str] | None,
    flags: dict[str, Any] | None,
    device: str,
    log: Callable[[str], None],
    threads: int = 0,
    glossary: Any = None,
) -> dict[str, Any]:
    """`nmt translate` on a Markdown or HTML document (nmt/markup/): read whole, its blocks
    translated sentence by sentence in token batches (following `glossary` when given), inline
    markup placed by the alignment, written whole (atomically to `output_path`, else to
    stdout)."""
    import sys

    from nmt.data.corpus import read_text
    from nmt.inference import Translator, set_threads
    from nmt.markup.document import translate_document as translate_markup

    where = str(input_path) if input_path is not None else "<stdin>"
    if input_path is not None:
        source = read_text(Path(input_path))
    else:
        try:
            source = sys.stdin.buffer.read().decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DataError(f"<stdin>: not valid UTF-8 (byte {exc.start})") from None
    set_threads(threads)
    translator = Translator.load(
        checkpoints, device, overrides or [], log, glossary=glossary, **(flags or {})
    )
    started = time.perf_counter()
    counts = {"units": 0, "sentences": 0}

    def aligned(texts: list[str]) -> list[Any]:
        results = []
        with progress_bar(len(texts) if len(texts) > 1 else 0, "translating") as advance:
            for first in range(0, len(texts), 1000):
                chunk = texts[first : first + 1000]
                results += translator.translate_full(chunk, attention=True, first_index=first,
                                                     where=f"{where} (block)")  # fmt: skip
                advance(len(chunk))
        counts["units"] = len(results)
        counts["sentences"] = sum(len(r.sentences) for r in results)
        return [r.aligned() for r in results]

    result = translate_markup(source, fmt, aligned)
    if output_path is not None:
        write_text(Path(output_path), result.text)
    else:
        try:
            sys.stdout.write(result.text)
            sys.stdout.flush()
        except BrokenPipeError:
            raise _reader_gone(0) from None
    seconds = time.perf_counter() - started
    log(f"translated {fmt}: {counts['units']:,} blocks ({counts['sentences']:,} sentences) in "
        f"{seconds:.1f} s")  # fmt: skip
    if result.skipped:
        log(f"warning: {where}: {result.skipped:,} block(s) left untranslated: their markup "
            "could not be followed")  # fmt: skip
    _log_too_long(translator, log)
    return {"lines": counts["units"], "sentences": counts["sentences"], "tokens": 0,
            "seconds": seconds, "skipped": result.skipped}  # fmt: skip


@contextlib.contextmanager
def progress_bar(total: int, what: str) -> Iterator[Callable[[int], None]]:
    """A rich progress bar on stderr, only when stderr is a terminal and there is a known
    `total` (lines); yields the function that advances it. The bar leaves no trace."""
    import sys

    if not total or not sys.stderr.isatty():
        yield lambda done: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    columns = (f"{what}", BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    # stdout may be the translation itself: only stderr goes through the live display.
    with Progress(*columns, console=Console(stderr=True), transient=True,
                  redirect_stdout=False) as bar:  # fmt: skip
        task = bar.add_task(what, total=total)
        yield lambda done: bar.advance(task, done)


def jsonl_requests(
    lines: list[str], where: str, first_index: int, glossary: Any
) -> tuple[list[str], list[Any] | None]:
    """JSONL input lines -> their texts and each line's glossary: `glossary` (the --glossary
    file's, or None) with the line's own terms added; None when no line has any."""
    from nmt.data.glossary import Glossary
    from nmt.data.textio import parse_jsonl_line

    texts, per_line = [], []
    for n, line in enumerate(lines):
        line_where = f"{where}:{first_index + n + 1}"
        text, pairs = parse_jsonl_line(line, line_where)
        texts.append(text)
        if pairs is None:
            per_line.append(glossary)
        elif glossary is None:
            per_line.append(Glossary.from_pairs(pairs, line_where))
        else:
            per_line.append(glossary.extended(pairs, line_where))
    return texts, None if all(g is None for g in per_line) else per_line


FORCE_ONE_TRANSLATION = (
    "--force reads one given translation per line: it takes no --nbest > 1 and no sampling"
)


def forced_translations(
    force_path: Path, source_lines: int, input_path: Path
) -> Iterator[list[str]]:
    """The lines of `force_path` in the chunks `file_chunks` gives the input, after checking the
    file whole and that it has a line for each of the input's `source_lines` lines."""
    from nmt.data import textio

    targets = textio.check_text_file(force_path)
    if source_lines != targets:
        raise DataError(
            f"--force {force_path}: {targets:,} translations for the {source_lines:,} lines of "
            f"{input_path}; give one translation per input line"
        )
    return textio.file_chunks(force_path)


def _reader_gone(lines_done: int) -> DataError:
    """The error for a reader that closed our stdout (`nmt translate ... | head`). Standard
    output is pointed at /dev/null first, so that the interpreter's own last flush is silent."""
    import os
    import sys

    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    return DataError(f"<stdout>: the reader closed the pipe after {lines_done:,} lines")


class TranslationWriter:
    """Writes results as text (or Moses n-best) or JSONL, counting lines and target tokens."""

    def __init__(
        self, translator: Any, output_format: str, with_attention: bool, path: Path | None
    ) -> None:
        self.nbest = translator.cfg.nbest > 1
        self.jsonl = output_format == "jsonl"
        self.with_attention = with_attention
        self.where = str(path) if path is not None else "<stdout>"  # names a failed write
        self.count = 0
        self.sentences = 0
        self.tokens = 0

    def flush(self, out: Any) -> None:
        """Flush after each batch, so that a pipe's reader gets its answers at once."""
        try:
            out.flush()
        except BrokenPipeError:
            raise _reader_gone(self.count) from None
        except OSError as exc:
            exc.filename = exc.filename or self.where
            raise

    def write(self, out: Any, results: list[Any]) -> None:
        import json

        from nmt.inference import EOS_PIECE

        try:
            for result in results:
                if self.jsonl:
                    row = result.to_dict(nbest=self.nbest, attention=self.with_attention)
                    out.write(json.dumps(row, ensure_ascii=False) + "\n")
                elif self.nbest:
                    for cand in result.nbest:
                        out.write(f"{self.count} ||| {cand.translation} ||| {cand.score:.4f}\n")
                else:
                    out.write(result.translation + "\n")
                self.count += 1
                self.sentences += max(1, len(result.sentences))
                self.tokens += sum(t != EOS_PIECE for t in result.tokens)
        except BrokenPipeError:
            raise _reader_gone(self.count) from None
        except OSError as exc:  # a full disk: named here, not by another output's file
            exc.filename = exc.filename or self.where
            raise


class AttentionSinks:
    """The attention outputs of `nmt translate`: matrices (.npz/.jsonl), Pharaoh links, heatmaps.
    The files appear only when translation finished without an error."""

    def __init__(
        self,
        translator: Any,
        attention_out: Path | None,
        alignments_out: Path | None,
        plot_dir: Path | None,
    ) -> None:
        self.translator = translator
        self.paths = (attention_out, alignments_out)
        self.plot_dir = plot_dir
        self.links: list[Any] = []
        self._stack = contextlib.ExitStack()
        self.attention: Any = None
        self.alignments: Any = None

    def __enter__(self) -> AttentionSinks:
        from nmt.decoding.alignment import AttentionWriter

        attention_out, alignments_out = self.paths
        cfg = self.translator.cfg
        meta = {"arch": self.translator.arch, "attention_layer": cfg.attention_layer,
                "attention_head": cfg.attention_head}  # fmt: skip
        if attention_out is not None:
            self.attention = self._stack.enter_context(AttentionWriter(attention_out, meta))
        if alignments_out is not None:
            # Opened now, so that an unwritable path fails before any translation.
            self.alignments = self._stack.enter_context(atomic_open(alignments_out))
        return self

    def write(self, results: list[Any]) -> None:
        from nmt.decoding.alignment import format_pharaoh
        from nmt.decoding.plot import plot_attention

        for result in results:
            sentences = result.sentences or [result]
            for sentence in sentences:
                record = sentence.record
                if self.attention is not None and record is not None:
                    self.attention.write(record)
                if self.plot_dir is not None and record is not None and record.word_matrix.size:
                    name = f"attention_{record.index}" + (
                        f"_{record.sentence}" if len(sentences) > 1 else ""
                    )
                    plot_attention(record, Path(self.plot_dir) / f"{name}.png")
            if self.alignments is not None:
                try:
                    self.alignments.write(format_pharaoh(result.alignment) + "\n")
                except OSError as exc:
                    exc.filename = exc.filename or str(self.paths[1])
                    raise

    def __exit__(self, *exc: Any) -> None:
        self._stack.__exit__(*exc)


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
    glossary_path: Path | None = None,
    threads: int = 0,
) -> dict[str, Any]:
    """`nmt evaluate`: translate each test set's source (or take its --hyp file) and score it with
    sacreBLEU (BLEU + signature, lowercased BLEU, chrF, TER). Every file is checked before any
    translation starts. `hyp_out` is a file for one test set and a folder (NAME.hyp) for several.
    With `glossary_path` the translations follow that glossary and each test set's entry counts
    its terms ("terms": found in the sources, placed in the translations).
    Lines are split into sentences as `nmt translate` splits them (decode.split, `--no-split`).
    Returns (and writes to `report_path` as JSON) {"models", "decode", "tests": {NAME: ...}}.
    """
    from nmt.checkpoint import guard_outputs
    from nmt.config import to_dict
    from nmt.data.glossary import Glossary
    from nmt.io import check_output_file, write_json, write_text
    from nmt.metrics import check_tokenize, corpus_scores, read_lines

    log = log or _log_stderr
    check_tokenize(tokenize)
    glossary = Glossary.from_file(glossary_path) if glossary_path is not None else None
    for path in (report_path, hyp_out if hyp_out is not None and len(sets) == 1 else None):
        if path is not None:
            check_output_file(path)
    inputs = _evaluate_inputs(sets) + model_inputs(checkpoints)
    inputs += [Input(Path(glossary_path), "--glossary")] if glossary_path is not None else []
    guard_outputs(_evaluate_outputs(sets, report_path, hyp_out), inputs, ConfigError)
    uses_model = any(s["hyp"] is None for s in sets.values())
    if uses_model and not checkpoints:
        raise ConfigError(
            "nmt evaluate needs RUN_DIR_OR_CHECKPOINT to translate --src, or --hyp FILE to score "
            "an existing translation"
        )
    if checkpoints and not uses_model:
        raise ConfigError("--hyp scores an existing file: drop RUN_DIR_OR_CHECKPOINT, or --hyp")
    if glossary is not None and not uses_model:
        raise ConfigError("--glossary steers translation, and --hyp translates nothing")
    # Read and check every file first: a typo in the last test set must not cost a translation.
    texts: dict[str, dict[str, Any]] = {}
    for name, files in sets.items():
        refs = [read_lines(r) for r in files["refs"]]
        first = files["hyp"] if files["hyp"] is not None else files["src"]
        lines = read_lines(first)
        if not lines:
            raise DataError(f"{first}: no lines to score; evaluate needs at least one sentence")
        for ref_path, ref in zip(files["refs"], refs, strict=True):
            if len(ref) != len(lines):
                raise DataError(
                    f"{ref_path}: {len(ref):,} lines, but {first} has {len(lines):,}; a reference "
                    "needs exactly one line per sentence"
                )
        texts[name] = {"lines": lines, "refs": refs}
    translator = None
    if uses_model:
        from nmt.inference import Translator, set_threads

        set_threads(threads)
        translator = Translator.load(
            checkpoints, device, overrides or [], log, glossary=glossary, **(flags or {})
        )
    results: dict[str, Any] = {}
    for name, files in sets.items():
        lines, refs = texts[name]["lines"], texts[name]["refs"]
        entry: dict[str, Any] = {
            "src": None if files["src"] is None else str(files["src"]),
            "refs": [str(r) for r in files["refs"]],
        }
        if translator is not None and files["hyp"] is None:
            started = time.perf_counter()
            outputs = []
            with progress_bar(len(lines), f"translating {name}") as advance:
                for first in range(0, len(lines), EVALUATE_CHUNK):
                    chunk = lines[first : first + EVALUATE_CHUNK]
                    outputs += translator.translate_full(chunk, first_index=first,
                                                         where=str(files["src"]))  # fmt: skip
                    advance(len(chunk))
            seconds = time.perf_counter() - started
            hyps = [r.translation for r in outputs]
            out_tokens = sum(t != "</s>" for r in outputs for t in r.tokens)  # EOS not counted
            entry["split"] = translator.cfg.split
            entry["source_sentences"] = sum(len(r.sentences) for r in outputs)
            entry["decode_seconds"] = round(seconds, 3)
            entry["sentences_per_second"] = round(len(hyps) / seconds, 2) if seconds else None
            entry["tokens_per_second"] = round(out_tokens / seconds, 1) if seconds else None
            if glossary is not None:
                entry["terms"] = count_terms(outputs)
            if hyp_out is not None:
                target = _hyp_file(hyp_out, name, len(sets))
                write_text(target, "".join(h + "\n" for h in hyps))
                entry["hyp"] = str(target)
            split = ("" if entry["source_sentences"] == len(hyps)
                     else f" ({entry['source_sentences']:,} sentences)")  # fmt: skip
            log(f"{name}: translated {len(hyps):,} lines{split} in {seconds:.1f} s")
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
    if translator is not None:
        _log_too_long(translator, log)
    if report_path is not None:
        write_json(report_path, report)
    return report


def _hyp_file(hyp_out: Path, name: str, sets: int) -> Path:
    """Where `--hyp-out` keeps the translations of test set `name`: the file itself for one set,
    NAME.hyp inside the folder for several."""
    return Path(hyp_out) if sets == 1 else Path(hyp_out) / f"{name}.hyp"


def _evaluate_inputs(sets: dict[str, dict[str, Any]]) -> list[Input]:
    inputs = []
    for name, files in sets.items():
        for role in ("src", "hyp"):
            if files[role] is not None:
                inputs.append(Input(Path(files[role]), f"the --{role} of test set {name}"))
        inputs += [Input(Path(ref), f"a --ref of test set {name}") for ref in files["refs"]]
    return inputs


def _evaluate_outputs(
    sets: dict[str, dict[str, Any]], report_path: Path | None, hyp_out: Path | None
) -> list[Output]:
    outputs = [Output("--report", Path(report_path))] if report_path is not None else []
    if hyp_out is not None:
        outputs += [Output("--hyp-out", _hyp_file(hyp_out, name, len(sets)))
                    for name, files in sets.items() if files["hyp"] is None]  # fmt: skip
    return outputs


def count_terms(results: list[Any]) -> dict[str, Any]:
    """How many glossary terms the sources held and how many their translations contain."""
    placements = [p for r in results for p in (r.terms or [])]
    placed = sum(p.is_placed for p in placements)
    return {
        "found": len(placements),
        "placed": placed,
        "placed_percent": round(100 * placed / len(placements), 2) if placements else None,
        "far_from_source": sum(p.is_far for p in placements),
    }


# Lines per translate_full call in evaluate: the progress bar moves after each.
EVALUATE_CHUNK = 1000


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
    for name, s in report["tests"].items():
        if "terms" in s:
            terms = s["terms"]
            rate = "-" if terms["placed_percent"] is None else f"{terms['placed_percent']:.1f}%"
            console.print(
                f"{name}: glossary terms placed {terms['placed']:,} of {terms['found']:,} "
                f"({rate}); {terms['far_from_source']:,} far from their source term"
            )
    first = next(iter(report["tests"].values()))
    for key in ("bleu_signature", "bleu_lc_signature", "chrf_signature", "ter_signature"):
        console.print(f"{key.removesuffix('_signature'):>7}: {first[key]}")


def align_eval(gold: Path, hyp: Path, report_path: Path | None = None) -> dict[str, Any]:
    """`nmt align-eval`: AER, precision and recall of Pharaoh `hyp` links against `gold`."""
    from nmt.checkpoint import guard_outputs
    from nmt.decoding.alignment import alignment_error_rate, read_pharaoh
    from nmt.io import write_json

    outputs = [Output("--report", Path(report_path))] if report_path is not None else []
    guard_outputs(outputs, [Input(Path(gold), "--gold"), Input(Path(hyp), "--hyp")], ConfigError)
    gold_links = read_pharaoh(gold)
    hyp_links = read_pharaoh(hyp)
    if not any(sure | possible for sure, possible in gold_links):
        raise DataError(
            f"{gold}: holds no gold links ({len(gold_links):,} lines); AER needs at least one"
        )
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
    attention_file: Path,
    index: int,
    out: Path,
    layer: int | None = None,
    subwords: bool = False,
    sentence: int = 0,
) -> Path:
    """`nmt plot`: the heatmap of sentence `sentence` of input line `index` (both 0-based) of an
    attention file."""
    from nmt.checkpoint import guard_outputs
    from nmt.decoding.alignment import get_record
    from nmt.decoding.plot import plot_attention

    if Path(out).suffix.lower() != ".png":
        raise ConfigError(f"--out {out}: write a .png file")
    inputs = [Input(Path(attention_file), "the attention file")]
    guard_outputs([Output("--out", Path(out))], inputs, ConfigError)
    _, record = get_record(attention_file, index, sentence)
    title = f"sentence {index}" + (f".{sentence}" if sentence else "")
    return plot_attention(record, out, layer=layer, words=not subwords, title=title)


def plot_metrics(runs: list[Path], out: Path, metric: str = "bleu") -> Path:
    """`nmt plot-metrics`: learning curves of one or more runs in one PNG (nmt/curves.py)."""
    from nmt.checkpoint import guard_outputs
    from nmt.curves import plot_curves, read_all

    if Path(out).suffix.lower() != ".png":
        raise ConfigError(f"--out {out}: write a .png file")
    if not runs:
        raise ConfigError("give at least one run folder (or metrics.jsonl)")
    check_output_path(Path(out), "--out")
    guard_outputs([Output("--out", Path(out))], model_inputs(list(runs)), ConfigError)
    curves = read_all([Path(run) for run in runs], metric)
    if curves[0].clock != "wall_seconds":
        _log_stderr("note: a run logged no wall clock (trained by an older nmt): time is drawn as "
                    "minutes inside updates, validation and saving left out")  # fmt: skip
    return plot_curves(curves, out, metric)


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
