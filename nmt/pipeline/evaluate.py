"""`nmt evaluate` (translate test sets and score them with sacreBLEU) and `nmt align-eval`
(hard alignments scored against gold links)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from nmt.checkpoint import guard_outputs
from nmt.config import to_dict
from nmt.data.corpus import check_test_name
from nmt.data.glossary import Glossary
from nmt.decoding.alignment import alignment_error_rate, read_pharaoh
from nmt.errors import ConfigError, DataError
from nmt.inference import EOS_PIECE, Translator, set_up_process
from nmt.io import Input, Output, check_output_file, write_json, write_text
from nmt.metrics import check_tokenize, corpus_scores, read_lines
from nmt.outputs import log_stderr, log_too_long, model_inputs, progress_bar


def parse_test_sets(
    src: Path | None, refs: list[Path], hyp: Path | None, tests: list[str]
) -> dict[str, dict[str, Any]]:
    """The test sets of one `nmt evaluate` call: name -> {"src", "refs", "hyp"} (paths).

    `--src/--ref` (or `--hyp/--ref`) give one set named after the source (or hypothesis) file;
    each `--test NAME=SRC,REF[,REF2...]` adds one more (NAME: `check_test_name`, for it names
    the file NAME.hyp in a --hyp-out folder).
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
        check_test_name(name, repr(item))
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
    log = log or log_stderr
    check_tokenize(tokenize)
    glossary = Glossary.from_file(glossary_path) if glossary_path is not None else None
    uses_model = _check_evaluate(checkpoints, sets, report_path, hyp_out, glossary_path)
    texts = {name: _read_test_set(files) for name, files in sets.items()}
    translator = None
    if uses_model:
        set_up_process(threads)
        translator = Translator.load(
            checkpoints, device, overrides or [], log, glossary=glossary, **(flags or {})
        )
    results: dict[str, Any] = {}
    for name, files in sets.items():
        lines, refs = texts[name]
        entry: dict[str, Any] = {
            "src": None if files["src"] is None else str(files["src"]),
            "refs": [str(r) for r in files["refs"]],
        }
        if translator is not None and files["hyp"] is None:
            target = _hyp_file(hyp_out, name, len(sets)) if hyp_out is not None else None
            with_terms = glossary is not None
            hyps = _translate_test_set(translator, name, lines, files["src"], target, entry, log,
                                       with_terms)  # fmt: skip
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
        log_too_long(translator, log)
    if report_path is not None:
        write_json(report_path, report)
    return report


def _check_evaluate(
    checkpoints: list[Path],
    sets: dict[str, dict[str, Any]],
    report_path: Path | None,
    hyp_out: Path | None,
    glossary_path: Path | None,
) -> bool:
    """Every output and input of the call checked before any work; whether a model translates
    (some test set has no --hyp)."""
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
    if glossary_path is not None and not uses_model:
        raise ConfigError("--glossary steers translation, and --hyp translates nothing")
    return uses_model


def _read_test_set(files: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """The lines to score (the source to translate, or the --hyp file) and the references, read
    and checked before any translation: a typo in the last test set must not cost one."""
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
    return lines, refs


def _translate_test_set(
    translator: Translator,
    name: str,
    lines: list[str],
    src: Path,
    hyp_out: Path | None,
    entry: dict[str, Any],
    log: Callable[[str], None],
    with_terms: bool,
) -> list[str]:
    """The translations of one test set, chunk by chunk under a progress bar; their speed and
    sentences go into `entry` (with the glossary terms they hold when `with_terms`, and the file
    they were written to with `hyp_out`)."""
    started = time.perf_counter()
    outputs = []
    with progress_bar(len(lines), f"translating {name}") as advance:
        for first in range(0, len(lines), EVALUATE_CHUNK):
            chunk = lines[first : first + EVALUATE_CHUNK]
            outputs += translator.translate_full(chunk, first_index=first, where=str(src))
            advance(len(chunk))
    seconds = time.perf_counter() - started
    hyps = [r.translation for r in outputs]
    out_tokens = sum(t != EOS_PIECE for r in outputs for t in r.tokens)  # EOS not counted
    entry["split"] = translator.cfg.split
    entry["source_sentences"] = sum(len(r.sentences) for r in outputs)
    entry["decode_seconds"] = round(seconds, 3)
    entry["sentences_per_second"] = round(len(hyps) / seconds, 2) if seconds else None
    entry["tokens_per_second"] = round(out_tokens / seconds, 1) if seconds else None
    if with_terms:
        entry["terms"] = count_terms(outputs)
    if hyp_out is not None:
        write_text(hyp_out, "".join(h + "\n" for h in hyps))
        entry["hyp"] = str(hyp_out)
    split = ("" if entry["source_sentences"] == len(hyps)
             else f" ({entry['source_sentences']:,} sentences)")  # fmt: skip
    log(f"{name}: translated {len(hyps):,} lines{split} in {seconds:.1f} s")
    return hyps


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
