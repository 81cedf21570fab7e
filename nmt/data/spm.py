"""SentencePiece (Kudo & Richardson 2018): train, load, encode and decode subword vocabularies.

Every model `nmt` uses has the special ids of `nmt.config`: PAD 0 `<pad>`, UNK 1 `<unk>`,
BOS 2 `<s>`, EOS 3 `</s>`. Training goes through the library's Python API from an in-memory
sentence iterator; the random generator is seeded and the thread count fixed, so the same input
gives the same model bytes. Encoding never adds BOS/EOS: `nmt.data.batching` adds them when it
builds a batch.

A tokenizer file is either a SentencePiece model whose ids are the model's (what `nmt prepare`
trains), or a mapped vocabulary (`MappedTokenizer`): the two SentencePiece models of an imported
Marian (OPUS-MT) model and the vocabulary they share, in one JSON file. `Tokenizer.load` reads
either.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import itertools
import json
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import sentencepiece as sp

from nmt.config import BOS_ID, EOS_ID, PAD_ID, UNK_ID, PrepareConfig
from nmt.errors import DataError
from nmt.io import atomic_open, check_file, parse_json

SPECIAL_PIECES = {"pad": "<pad>", "unk": "<unk>", "bos": "<s>", "eos": "</s>"}
_DROPPED_ON_DECODE = frozenset({PAD_ID, BOS_ID, EOS_ID})
_TOO_HIGH = re.compile(r"Vocabulary size too high \((\d+)\)\. Please set it to a value <= (\d+)")
_TOO_LOW = re.compile(r"Vocabulary size is smaller than required_chars\. (\d+) vs (\d+)")


class Tokenizer:
    """A loaded SentencePiece model. Ids never include BOS/EOS; `decode` skips PAD/BOS/EOS.

    Picklable (it pickles the model bytes), so `datasets.map(num_proc=...)` can ship it to workers.
    """

    def __init__(self, model: bytes, path: Path | None = None) -> None:
        self.model_bytes = model
        self.path = path
        self.sha256 = hashlib.sha256(model).hexdigest()
        self._sp = sp.SentencePieceProcessor(model_proto=model)
        found = (self._sp.pad_id(), self._sp.unk_id(), self._sp.bos_id(), self._sp.eos_id())
        if found != (PAD_ID, UNK_ID, BOS_ID, EOS_ID):
            raise DataError(
                f"{path or 'SentencePiece model'}: special ids pad/unk/bos/eos are {found}; nmt "
                f"needs {(PAD_ID, UNK_ID, BOS_ID, EOS_ID)} (train with pad_id=0 unk_id=1 bos_id=2 "
                "eos_id=3, or let nmt prepare train it)"
            )

    @classmethod
    def load(cls, path: str | Path, side: str = "src") -> Tokenizer:
        """The tokenizer in file `path`: a SentencePiece model, or a mapped vocabulary, whose
        `side` ("src" or "tgt") it then is."""
        path = Path(path)
        check_file(path, DataError, "SentencePiece model not found")
        return cls.from_bytes(path.read_bytes(), path, side)

    @staticmethod
    def from_bytes(model: bytes, path: Path | None = None, side: str = "src") -> Tokenizer:
        """`Tokenizer` or `MappedTokenizer`, whichever the bytes of a tokenizer file hold."""
        if model.lstrip()[:1] == b"{":  # a SentencePiece model is a protobuf: never JSON
            return MappedTokenizer(model, path, side)
        try:
            return Tokenizer(model, path)
        except RuntimeError as exc:  # the library's parse error
            raise DataError(f"{path}: not a SentencePiece model ({exc})") from None

    @property
    def spm_bytes(self) -> bytes:
        """The SentencePiece model that cuts this side's text (what an export ships)."""
        return self.model_bytes

    @property
    def vocab_size(self) -> int:
        return self._sp.get_piece_size()

    def encode(self, text: str) -> list[int]:
        return self._sp.encode(text, out_type=int)

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """Many sentences at once; the library spreads them over threads (same ids as `encode`)."""
        return self._sp.encode(list(texts), out_type=int)

    def decode(self, ids: Iterable[int]) -> str:
        """Text of `ids`, skipping PAD, BOS and EOS (UNK is rendered as the library's ` ⁇ `)."""
        return self._sp.decode([int(i) for i in ids if int(i) not in _DROPPED_ON_DECODE])

    def pieces(self, ids: Iterable[int]) -> list[str]:
        """The subword string of each id (special ids included), for plots and debugging."""
        return [self._sp.id_to_piece(int(i)) for i in ids]

    def write_vocab(self, path: str | Path) -> None:
        """A human-readable `piece<TAB>score` list, one line per id (like `spm_train`'s .vocab)."""
        with atomic_open(path) as handle:
            for i in range(self.vocab_size):
                handle.write(f"{self._sp.id_to_piece(i)}\t{self._sp.get_score(i):g}\n")

    def __getstate__(self) -> dict[str, Any]:
        return {"model": self.model_bytes, "path": self.path}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["model"], state["path"])  # type: ignore[misc]

    def __repr__(self) -> str:
        return f"Tokenizer({self.path or '<memory>'}, vocab_size={self.vocab_size})"


MAPPED_KIND = "nmt-mapped-sentencepiece"  # the "kind" of a mapped vocabulary file, version 1
SIDES = ("src", "tgt")
# Marian's decoding (MarianTokenizer with skip_special_tokens) leaves out UNK as well.
_DROPPED_BY_MAPPED = _DROPPED_ON_DECODE | {UNK_ID}


def split_language_code(text: str) -> tuple[list[str], str]:
    """A leading ">>xx<<" (the target-language token of multi-target Marian models) as a piece
    of its own, and the rest of the text, as MarianTokenizer cuts them:
    ">>fr<< Hallo" -> ([">>fr<<"], " Hallo")."""
    end = text.find("<<") if text.startswith(">>") else -1
    if end == -1:
        return [], text
    return [text[: end + 2]], text[end + 2 :]


class MappedTokenizer(Tokenizer):
    """One side of a shared vocabulary over two SentencePiece models, as Marian (OPUS-MT) models
    have them: text is cut into pieces by this side's model, and each piece gets its id in the
    shared vocabulary (UNK when it has none), as MarianTokenizer does through vocab.json. A
    leading ">>xx<<" stays one piece (`split_language_code`). Decoding drops PAD, BOS, EOS and
    UNK and lets the target model join the pieces, as MarianTokenizer's decode with
    skip_special_tokens does.

    The file (`write_mapped_vocabulary`) is one JSON object holding both models (base64) and the
    vocabulary in id order, so that it is hashed, copied and reused like any SentencePiece model.
    """

    def __init__(self, model: bytes, path: Path | None = None, side: str = "src") -> None:
        if side not in SIDES:
            raise ValueError(f"side must be one of {SIDES}, got {side!r}")
        where = path or "mapped vocabulary"
        try:
            data = parse_json(model.decode("utf-8"))
            if not isinstance(data, dict) or data.get("kind") != MAPPED_KIND:
                raise ValueError(f'no "kind": "{MAPPED_KIND}"')
            spm_model = base64.b64decode(data[f"{side}_spm"], validate=True)
            pieces = data["pieces"]
            if not isinstance(pieces, list):
                raise TypeError("pieces must be a list")
        except (ValueError, KeyError, TypeError, binascii.Error) as exc:
            raise DataError(f"{where}: not a mapped vocabulary file ({exc})") from None
        if pieces[:4] != [SPECIAL_PIECES[k] for k in ("pad", "unk", "bos", "eos")]:
            raise DataError(f"{where}: the first pieces must be <pad> <unk> <s> </s>")
        if len(set(pieces)) != len(pieces) or not all(isinstance(p, str) for p in pieces):
            raise DataError(f"{where}: the vocabulary must list distinct pieces")
        self.model_bytes = model
        self.path = path
        self.side = side
        self.sha256 = hashlib.sha256(model).hexdigest()
        self._side_model = spm_model
        try:
            self._sp = sp.SentencePieceProcessor(model_proto=spm_model)
        except RuntimeError as exc:
            raise DataError(f"{where}: its {side} SentencePiece model is damaged ({exc})") from None
        self._pieces = pieces
        # PAD and BOS are nmt's own slots (padding; Marian's <pad>, the decoder start): no text
        # maps to them.
        self._ids = {p: i for i, p in enumerate(pieces) if i not in (PAD_ID, BOS_ID)}

    @property
    def spm_bytes(self) -> bytes:
        return self._side_model

    @property
    def vocab_size(self) -> int:
        return len(self._pieces)

    def encode(self, text: str) -> list[int]:
        return self.encode_batch([text])[0]

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        split = [split_language_code(text) for text in texts]
        cut = self._sp.encode([rest for _, rest in split], out_type=str)
        return [
            [self._ids.get(piece, UNK_ID) for piece in code + pieces]
            for (code, _), pieces in zip(split, cut, strict=True)
        ]

    def decode(self, ids: Iterable[int]) -> str:
        pieces = [self._pieces[int(i)] for i in ids if int(i) not in _DROPPED_BY_MAPPED]
        # The library keeps a piece it does not know (another side's, a ">>xx<<") as it is,
        # "▁" included; Marian's tokenizer turns those into spaces too.
        return self._sp.decode_pieces(pieces).replace(WORD_START, " ").strip()

    def pieces(self, ids: Iterable[int]) -> list[str]:
        return [self._pieces[int(i)] for i in ids]

    def write_vocab(self, path: str | Path) -> None:
        with atomic_open(path) as handle:
            handle.writelines(f"{piece}\t0\n" for piece in self._pieces)

    def __getstate__(self) -> dict[str, Any]:
        return {"model": self.model_bytes, "path": self.path, "side": self.side}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["model"], state["path"], state["side"])  # type: ignore[misc]

    def __repr__(self) -> str:
        return f"MappedTokenizer({self.path or '<memory>'}, {self.side}, {self.vocab_size} pieces)"


def check_spm_model(model: bytes, path: Path) -> None:
    """DataError naming `path` when `model` is not a SentencePiece model the library loads."""
    try:
        sp.SentencePieceProcessor(model_proto=model)
    except RuntimeError:  # the library's parse error, which names only its own source line
        raise DataError(f"{path}: not a SentencePiece model (it does not parse as one)") from None


def write_mapped_vocabulary(
    path: str | Path, pieces: Sequence[str], src_spm: bytes, tgt_spm: bytes, origin: str
) -> MappedTokenizer:
    """Write a `MappedTokenizer` file: `pieces` in id order (starting <pad> <unk> <s> </s>), the
    source and target SentencePiece models, and where they came from. Checked before it is
    written (DataError); returns its source side."""
    document = {
        "kind": MAPPED_KIND,
        "version": 1,
        "origin": origin,
        "src_spm": base64.b64encode(src_spm).decode("ascii"),
        "tgt_spm": base64.b64encode(tgt_spm).decode("ascii"),
        "pieces": list(pieces),
    }
    model = (json.dumps(document, ensure_ascii=False, indent=1) + "\n").encode("utf-8")
    tok = MappedTokenizer(model, Path(path), "src")
    with atomic_open(path, "wb", encoding=None) as handle:
        handle.write(model)
    return tok


def train_tokenizer(
    sentences: Iterable[str], cfg: PrepareConfig, path: str | Path, where: str
) -> Tokenizer:
    """Train a model on `sentences` with `cfg`'s SentencePiece options and write it to `path`.

    `where` names the corpus in error messages. A vocabulary size the corpus cannot support is a
    `DataError` that gives the largest size SentencePiece would accept.
    """
    path = Path(path)
    buffer = io.BytesIO()
    options: dict[str, Any] = {
        "sentence_iterator": iter(sentences),
        "model_writer": buffer,
        "vocab_size": cfg.vocab_size,
        "model_type": cfg.model_type,
        "character_coverage": cfg.character_coverage,
        "byte_fallback": cfg.byte_fallback,
        "hard_vocab_limit": cfg.hard_vocab_limit,
        "input_sentence_size": cfg.spm_max_sentences,
        "shuffle_input_sentence": True,
        "num_threads": cfg.spm_threads,
        "pad_id": PAD_ID,
        "unk_id": UNK_ID,
        "bos_id": BOS_ID,
        "eos_id": EOS_ID,
        "pad_piece": SPECIAL_PIECES["pad"],
        "unk_piece": SPECIAL_PIECES["unk"],
        "bos_piece": SPECIAL_PIECES["bos"],
        "eos_piece": SPECIAL_PIECES["eos"],
        # Our cleaning already applied NFKC when asked; with it off, SentencePiece must not
        # normalise behind our back either, or decoded text would differ from the input.
        "normalization_rule_name": "nmt_nfkc" if cfg.normalize else "identity",
        "minloglevel": 2,  # the library's progress log is long; errors still raise
    }
    if cfg.user_defined_symbols:
        options["user_defined_symbols"] = list(cfg.user_defined_symbols)
    # The seed drives the sampling of input_sentence_size sentences and unigram's EM order.
    sp.set_random_generator_seed(cfg.seed)
    try:
        sp.SentencePieceTrainer.train(**options)
    except RuntimeError as exc:
        raise _training_error(str(exc), cfg, where) from None
    model = buffer.getvalue()
    with atomic_open(path, "wb", encoding=None) as handle:
        handle.write(model)
    return Tokenizer(model, path)


def sample_rows(rows: int, cfg: PrepareConfig) -> np.ndarray | None:
    """The training pairs SentencePiece learns from, as sorted row numbers: None (all) when their
    sentences fit `cfg.spm_max_sentences` (both sides count for a joint vocabulary; 0: no limit),
    else a uniform sample of as many pairs as fit, drawn with `cfg.seed`. Choosing them here spares
    handing the trainer every sentence of a large corpus only for it to keep a sample."""
    limit = cfg.spm_max_sentences
    per_pair = 2 if cfg.joint_vocab else 1
    if limit == 0 or rows * per_pair <= limit:
        return None
    rng = np.random.default_rng(cfg.seed)
    return np.sort(rng.choice(rows, size=max(limit // per_pair, 1), replace=False))


def _training_error(message: str, cfg: PrepareConfig, where: str) -> DataError:
    high = _TOO_HIGH.search(message)
    if high:
        most = int(high.group(2))
        return DataError(
            f"{where}: vocab size {cfg.vocab_size} is larger than this corpus allows: "
            f"SentencePiece accepts at most {most}; pass --vocab-size {most} or less (or --set "
            "hard_vocab_limit=false to take the size as an upper bound)"
        )
    low = _TOO_LOW.search(message)
    if low:
        return DataError(
            f"{where}: vocab size {cfg.vocab_size} is too small: the corpus needs {low.group(2)} "
            "pieces for its characters and special tokens; raise --vocab-size or lower "
            "character_coverage"
        )
    return DataError(f"{where}: SentencePiece training failed: {message.strip().splitlines()[-1]}")


def make_tokenizers(
    cfg: PrepareConfig, src_texts: Iterable[str], tgt_texts: Iterable[str], root: Path, where: str
) -> dict[str, tuple[str, Tokenizer, str | None]]:
    """The source and target tokenizers of a prepared directory, written into `root`.

    Returns side -> (file name in `root`, tokenizer, path it was reused from or None). A joint
    vocabulary (`cfg.joint_vocab`) is one `spm.model` trained on both sides of the training data;
    otherwise each side gets `spm.<lang>.model` trained on its own text. `cfg.spm_model` /
    `cfg.spm_tgt_model` reuse existing models (copied in, so the directory stands on its own).
    """
    if cfg.joint_vocab:
        joint = itertools.chain.from_iterable(zip(src_texts, tgt_texts, strict=True))
        tok, reused = _one_tokenizer(cfg, cfg.spm_model, joint, root / "spm.model", where)
        # One file; a mapped vocabulary still cuts each side's text with that side's model.
        tgt = Tokenizer.from_bytes(tok.model_bytes, tok.path, "tgt")
        return {"src": ("spm.model", tok, reused), "tgt": ("spm.model", tgt, reused)}
    out = {}
    sides = (
        ("src", cfg.src_lang, cfg.spm_model, src_texts),
        ("tgt", cfg.tgt_lang, cfg.spm_tgt_model, tgt_texts),
    )
    for side, lang, model, texts in sides:
        file = f"spm.{lang}.model"
        tok, reused = _one_tokenizer(cfg, model, texts, root / file, f"{where} ({lang} side)", side)
        out[side] = (file, tok, reused)
    return out


def _one_tokenizer(
    cfg: PrepareConfig,
    model: str | None,
    texts: Iterable[str],
    path: Path,
    where: str,
    side: str = "src",
) -> tuple[Tokenizer, str | None]:
    if model:
        tok = Tokenizer.load(model, side)
        with atomic_open(path, "wb", encoding=None) as handle:
            handle.write(tok.model_bytes)
        tok = Tokenizer.from_bytes(tok.model_bytes, path, side)
        reused: str | None = str(Path(model).resolve())
    else:
        tok = train_tokenizer(texts, cfg, path, where)
        reused = None
    tok.write_vocab(path.with_suffix(".vocab"))
    return tok, reused


# ---- words of a piece sequence ---------------------------------------------------------------

# Scripts written without spaces between words: CJK ideographs and punctuation, kana, Thai, Lao,
# Myanmar, Khmer and the fullwidth/halfwidth forms.
_SPACELESS_SCRIPT = re.compile(
    "[\u0e00-\u0eff\u1000-\u109f\u1780-\u17ff\u3000-\u30ff\u31f0-\u31ff"
    "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff00-\uffef\U00020000-\U0003134f]"
)
WORD_START = "\u2581"  # SentencePiece's "▁"


def word_groups(pieces: Sequence[str]) -> list[list[int]]:
    """Piece indices of each word: a piece starting with "▁" opens a new word (so does the first
    piece, whatever it looks like). ["▁Ein", "▁Hund", "e", "."] -> [[0], [1, 2, 3]].

    Text written without spaces (Japanese, Chinese, Thai) would otherwise make a whole sentence
    one word, which no alignment or picture can use, so a piece in such a script is a unit of its
    own: ["▁初", "に", "▁i", "Phone"] -> [[0], [1], [2, 3]].
    """
    spaceless = [bool(_SPACELESS_SCRIPT.search(piece)) for piece in pieces]
    groups: list[list[int]] = []
    for i, piece in enumerate(pieces):
        after_spaceless = i > 0 and (spaceless[i] or spaceless[i - 1])
        if not groups or piece.startswith(WORD_START) or after_spaceless:
            groups.append([i])
        else:
            groups[-1].append(i)
    return _join_empty_groups(groups, pieces)


def word_end_flags(pieces: Sequence[str]) -> list[bool]:
    """For each piece of a vocabulary, whether a word before it ends where it begins: it starts a
    word ("▁"), starts with punctuation or another sign that is no letter or digit ("." "-"
    "'s"), or is in a script written without spaces. Lexically constrained search uses it to keep
    a term from running into the pieces of a longer word ("bike" + "s")."""
    return [
        p.startswith(WORD_START) or not p[:1].isalnum() or bool(_SPACELESS_SCRIPT.match(p))
        for p in pieces
    ]


def _join_empty_groups(groups: list[list[int]], pieces: Sequence[str]) -> list[list[int]]:
    """A group that spells no text (a bare "▁" before another word start, as in
    ["▁A", "▁", "▁B"], which detokenizes to "A  B") is no word: its pieces join the next word,
    or the previous one at the end, so that words match the whitespace-split translation."""
    kept: list[list[int]] = []
    pending: list[int] = []
    for group in groups:
        if not "".join(pieces[i] for i in group).replace(WORD_START, "").strip():
            pending += group
            continue
        kept.append(pending + group)
        pending = []
    if pending and kept:
        kept[-1] += pending
    return kept
