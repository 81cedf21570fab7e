"""Corpus-level BLEU, chrF and TER through sacrebleu (Post 2018), each with its signature.

The scores are exactly those of the `sacrebleu` command line on the same files with default
settings (`sacrebleu REF -i HYP -m bleu chrf ter`), plus BLEU on lowercased text (`-lc`), which the
Multi30k literature reports. Files are read the way that command reads them: every line with its
trailing whitespace stripped (`read_lines`), so scores computed here and there agree.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from nmt.errors import ConfigError, DataError
from nmt.io import check_file, decode_utf8, open_binary


def corpus_scores(
    hyps: Sequence[str], refs: Sequence[Sequence[str]], tokenize: str | None = None
) -> dict[str, Any]:
    """Score hypotheses against one or more reference streams.

    `refs` is a list of reference streams, each with one line per hypothesis (sacrebleu's layout:
    `refs[k][i]` is the k-th reference of sentence i). `tokenize` is sacrebleu's BLEU tokenizer
    (default "13a"; "zh", "char", "ja-mecab", ... for languages without spaces).

    Returns {"sentences", "bleu", "bleu_signature", "bleu_detail", "bleu_lc",
    "bleu_lc_signature", "chrf", "chrf_signature", "ter", "ter_signature"}; scores in [0, 100]
    (TER may exceed 100), unrounded.
    """
    from sacrebleu.metrics import BLEU, CHRF, TER

    hyps = list(hyps)
    streams = [list(r) for r in refs]
    if not streams:
        raise ValueError("corpus_scores needs at least one reference stream")
    for k, stream in enumerate(streams):
        if len(stream) != len(hyps):
            raise ValueError(
                f"reference stream {k + 1} has {len(stream)} lines, the hypotheses {len(hyps)}"
            )
    bleu = BLEU(tokenize=tokenize)  # None: sacrebleu's default, 13a
    bleu_lc = BLEU(lowercase=True, tokenize=tokenize)
    chrf = CHRF()
    ter = TER()
    b = bleu.corpus_score(hyps, streams)
    lc = bleu_lc.corpus_score(hyps, streams)
    c = chrf.corpus_score(hyps, streams)
    t = ter.corpus_score(hyps, streams)
    return {
        "sentences": len(hyps),
        "bleu": b.score,
        "bleu_signature": str(bleu.get_signature()),
        "bleu_detail": {
            "precisions": list(b.precisions),
            "bp": b.bp,
            "ratio": b.sys_len / b.ref_len if b.ref_len else 0.0,
            "hyp_len": b.sys_len,
            "ref_len": b.ref_len,
        },
        "bleu_lc": lc.score,
        "bleu_lc_signature": str(bleu_lc.get_signature()),
        "chrf": c.score,
        "chrf_signature": str(chrf.get_signature()),
        "ter": t.score,
        "ter_signature": str(ter.get_signature()),
    }


def check_tokenize(tokenize: str | None) -> None:
    """ConfigError unless sacreBLEU can build the BLEU tokenizer `tokenize` (None: its default).
    Called before any translation, so that a typo costs nothing."""
    from sacrebleu.metrics import BLEU

    if tokenize is None:
        return
    try:
        BLEU(tokenize=tokenize)
    except KeyError:
        from sacrebleu.metrics.bleu import _TOKENIZERS

        names = ", ".join(_TOKENIZERS)
        raise ConfigError(f"--tokenize {tokenize!r}: unknown; sacreBLEU has {names}") from None
    except (ImportError, OSError, RuntimeError) as exc:  # ja-mecab etc. need extra packages
        raise ConfigError(f"--tokenize {tokenize}: not usable here ({exc})") from None


def read_lines(path: str | Path) -> list[str]:
    """Lines of a UTF-8 text file (.gz allowed) with trailing whitespace stripped, as sacrebleu's
    command line reads hypotheses and references. Raises DataError naming the file."""
    path = Path(path)
    check_file(path, DataError)
    try:
        with open_binary(path) as handle:
            text = decode_utf8(handle.read(), path, DataError)
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{path}: cannot read ({exc})") from None
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()  # the newline that ends the last line does not start another
    return [line.rstrip() for line in lines]
