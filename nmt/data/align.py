"""Word alignments of the training pairs, for guided-alignment training (`train.guided_alignment`).

`nmt prepare --set alignments=eflomal` runs eflomal (Östling and Tiedemann 2017, "Efficient
Word Alignment with Markov Chain Monte Carlo") in both directions, symmetrises the two with
grow-diag-final-and (Koehn et al. 2005, section 3.2; Och and Ney 2003, section 4.1) and maps the
word links onto SentencePiece pieces: two pieces are linked when their words are (Garg et al.
2019, section 5.1, do the same with BPE). The words eflomal sees are the ones the pieces spell
(`word_groups`), so the mapping back is exact by construction.

Links are stored per pair as one flat list [s0, t0, s1, t1, ...] of piece positions (source
piece s, target piece t, 0-based, without BOS/EOS): the `align` column of the train split.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Sequence

from nmt.data.spm import WORD_START, word_groups
from nmt.errors import DataError

Link = tuple[int, int]  # (source position, target position)
EMPTY_WORD = "<empty>"  # stands in for a side without words, whose links are dropped
_NEIGHBOURS = ((-1, 0), (0, -1), (1, 0), (0, 1), (-1, -1), (-1, 1), (1, -1), (1, 1))


def grow_diag_final_and(forward: Iterable[Link], reverse: Iterable[Link]) -> set[Link]:
    """Symmetrise two directional alignments (both as (source, target) links): start from their
    intersection, repeatedly add a neighbouring link (diagonals included) of the union that
    covers a word not yet aligned on one side, then add links of each direction whose source and
    target words are both still unaligned ("final-and")."""
    fwd, rev = set(forward), set(reverse)
    union = fwd | rev
    links = fwd & rev
    src_done = {s for s, _ in links}
    tgt_done = {t for _, t in links}

    def add(link: Link) -> None:
        links.add(link)
        src_done.add(link[0])
        tgt_done.add(link[1])

    grown = True
    while grown:
        grown = False
        for s, t in sorted(links):
            for ds, dt in _NEIGHBOURS:
                new = (s + ds, t + dt)
                is_new_word = new[0] not in src_done or new[1] not in tgt_done
                if new in union and new not in links and is_new_word:
                    add(new)
                    grown = True
    for direction in (fwd, rev):
        for s, t in sorted(direction):
            if s not in src_done and t not in tgt_done:
                add((s, t))
    return links


def word_strings(pieces: Sequence[str]) -> list[str]:
    """The words `word_groups` finds in `pieces`, as text for the aligner (never empty, no
    spaces inside a word)."""
    words = ["".join(pieces[i] for i in g).replace(WORD_START, "") for g in word_groups(pieces)]
    return [w if w.strip() else WORD_START for w in words]


def piece_links(
    word_links: Iterable[Link], src_pieces: Sequence[str], tgt_pieces: Sequence[str]
) -> list[Link]:
    """Word links -> piece links: every piece of source word i with every piece of target word
    j, sorted. Links to words that the pieces do not have are an error of the caller."""
    src_groups, tgt_groups = word_groups(src_pieces), word_groups(tgt_pieces)
    out = {(s, t) for i, j in word_links for s in src_groups[i] for t in tgt_groups[j]}
    return sorted(out)


def parse_links(line: str, where: str) -> set[Link]:
    """Pharaoh links "0-1 2-2" -> {(0, 1), (2, 2)}."""
    try:
        return {(int(a), int(b)) for a, b in (item.split("-") for item in line.split())}
    except ValueError:
        raise DataError(f"{where}: expected links like '0-1 2-2', found {line!r}") from None


def run_eflomal(
    src_words: Sequence[Sequence[str]], tgt_words: Sequence[Sequence[str]]
) -> list[tuple[set[Link], set[Link]]]:
    """(forward, reverse) word links of each pair, both as (source, target), from eflomal with
    its default model (HMM with fertility) and settings."""
    try:
        import eflomal
    except ImportError:
        raise DataError(
            "alignments=eflomal needs the eflomal package: pip install 'nmt[align]'"
        ) from None
    src_lines = [" ".join(words) or EMPTY_WORD for words in src_words]
    tgt_lines = [" ".join(words) or EMPTY_WORD for words in tgt_words]
    with tempfile.TemporaryDirectory(prefix="nmt-eflomal-") as tmp:
        fwd_path, rev_path = os.path.join(tmp, "fwd"), os.path.join(tmp, "rev")
        eflomal.Aligner().align(
            src_lines, tgt_lines, links_filename_fwd=fwd_path, links_filename_rev=rev_path
        )
        with open(fwd_path, encoding="utf-8") as f, open(rev_path, encoding="utf-8") as r:
            fwd, rev = f.read().splitlines(), r.read().splitlines()
    if not len(fwd) == len(rev) == len(src_lines):
        raise DataError(
            f"eflomal returned {len(fwd)} and {len(rev)} alignments for {len(src_lines)} pairs"
        )
    return [
        (parse_links(a, f"eflomal forward, pair {i + 1}"), parse_links(b, f"reverse, {i + 1}"))
        for i, (a, b) in enumerate(zip(fwd, rev, strict=True))
    ]


def align_pieces(
    src_pieces: Sequence[Sequence[str]], tgt_pieces: Sequence[Sequence[str]]
) -> list[list[int]]:
    """Symmetrised eflomal links of each pair of piece sequences, as flat piece-position lists
    [s0, t0, s1, t1, ...] (the stored `align` column)."""
    src_words = [word_strings(p) for p in src_pieces]
    tgt_words = [word_strings(p) for p in tgt_pieces]
    directional = run_eflomal(src_words, tgt_words)
    out: list[list[int]] = []
    for src, tgt, (fwd, rev) in zip(src_pieces, tgt_pieces, directional, strict=True):
        if not src or not tgt:
            out.append([])
            continue
        links = piece_links(grow_diag_final_and(fwd, rev), src, tgt)
        out.append([x for link in links for x in link])
    return out


__all__ = [
    "align_pieces",
    "grow_diag_final_and",
    "parse_links",
    "piece_links",
    "run_eflomal",
    "word_strings",
]
