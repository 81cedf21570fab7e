"""nmt.data.corpus: each input kind reads the same pairs; each bad input is a one-line DataError."""

from __future__ import annotations

import csv
import gzip
import json
from pathlib import Path

import pytest
from data_support import MULTI30K, make_pairs, write_pair_files

from nmt.config import PrepareConfig
from nmt.data.corpus import (
    clean_pairs,
    clean_text,
    default_split_name,
    parse_spec,
    read_pairs,
    text_length,
)
from nmt.errors import DataError

PAIRS = make_pairs(40, seed=5) + [
    ('Er sagt: "Hallo, Welt"', 'He says: "hello, world"'),  # quotes and commas survive CSV
    ("Straße\u2028mit Trenner", "street with\u2028separator"),  # U+2028 must not split a line
]
CFG = PrepareConfig()


def read(spec: str, role: str = "train", cfg: PrepareConfig = CFG) -> list[tuple[str, str]]:
    pairs = read_pairs(parse_spec(spec, cfg.src_lang, cfg.tgt_lang), cfg, role)
    assert pairs.read == len(pairs)
    return list(zip(pairs.src, pairs.tgt, strict=True))


# ---- input kinds --------------------------------------------------------------------------------


def test_two_files_named_one_by_one(tmp_path: Path) -> None:
    write_pair_files(tmp_path / "raw", PAIRS)
    assert read(f"{tmp_path / 'raw.de'},{tmp_path / 'raw.en'}") == PAIRS


def test_prefix_plain_and_gz(tmp_path: Path) -> None:
    write_pair_files(tmp_path / "plain", PAIRS)
    write_pair_files(tmp_path / "packed", PAIRS, gz=True)
    assert read(str(tmp_path / "plain")) == PAIRS
    assert read(str(tmp_path / "packed")) == PAIRS
    spec = parse_spec(str(tmp_path / "packed"), "de", "en")
    assert [p.name for p in spec.paths] == ["packed.de.gz", "packed.en.gz"]


def test_crlf_and_bom_are_not_part_of_the_text(tmp_path: Path) -> None:
    (tmp_path / "w.de").write_bytes("\ufeffeins\r\nzwei\r\n".encode())
    (tmp_path / "w.en").write_bytes(b"one\ntwo")  # no final newline
    assert read(str(tmp_path / "w")) == [("eins", "one"), ("zwei", "two")]


def test_tsv_named_and_positional(tmp_path: Path) -> None:
    body = "".join(f"{s}\t{t}\n" for s, t in PAIRS)
    (tmp_path / "named.tsv").write_text("en\tde\n" + "".join(f"{t}\t{s}\n" for s, t in PAIRS))
    (tmp_path / "positional.tsv").write_text(body)
    assert read(str(tmp_path / "named.tsv")) == PAIRS
    assert read(str(tmp_path / "positional.tsv")) == PAIRS
    with gzip.open(tmp_path / "packed.tsv.gz", "wt", encoding="utf-8") as handle:
        handle.write(body)
    assert read(str(tmp_path / "packed.tsv.gz")) == PAIRS


def test_tsv_columns_by_number_and_by_configured_name(tmp_path: Path) -> None:
    (tmp_path / "wide.tsv").write_text(
        "".join(f"{i}\t{s}\tx\t{t}\n" for i, (s, t) in enumerate(PAIRS))
    )
    assert (
        read(str(tmp_path / "wide.tsv"), cfg=PrepareConfig(src_column="1", tgt_column="3")) == PAIRS
    )
    (tmp_path / "other.tsv").write_text(
        "id\tsource\ttarget\n" + "".join(f"{i}\t{s}\t{t}\n" for i, (s, t) in enumerate(PAIRS))
    )
    cfg = PrepareConfig(src_column="source", tgt_column="target")
    assert read(str(tmp_path / "other.tsv"), cfg=cfg) == PAIRS


def test_csv_named_with_quoting(tmp_path: Path) -> None:
    with open(tmp_path / "c.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "de", "en"])
        writer.writerows([i, s, t] for i, (s, t) in enumerate(PAIRS))
    assert read(str(tmp_path / "c.csv")) == PAIRS


def test_jsonl_flat_and_translation_shapes(tmp_path: Path) -> None:
    flat = "".join(json.dumps({"de": s, "en": t, "id": i}) + "\n" for i, (s, t) in enumerate(PAIRS))
    nested = "".join(json.dumps({"translation": {"de": s, "en": t}}) + "\n" for s, t in PAIRS)
    (tmp_path / "flat.jsonl").write_text(flat)
    (tmp_path / "nested.jsonl").write_text(nested)
    assert read(str(tmp_path / "flat.jsonl")) == PAIRS
    assert read(str(tmp_path / "nested.jsonl")) == PAIRS


def test_parquet_flat_and_translation_shapes(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    src, tgt = [s for s, _ in PAIRS], [t for _, t in PAIRS]
    pq.write_table(pa.table({"en": tgt, "de": src}), tmp_path / "flat.parquet")
    translation = pa.StructArray.from_arrays([pa.array(src), pa.array(tgt)], names=["de", "en"])
    pq.write_table(pa.table({"translation": translation}), tmp_path / "nested.parquet")
    assert read(str(tmp_path / "flat.parquet")) == PAIRS
    assert read(str(tmp_path / "nested.parquet")) == PAIRS


def test_save_to_disk_dataset_and_dataset_dict(tmp_path: Path) -> None:
    import datasets

    rows = {"de": [s for s, _ in PAIRS], "en": [t for _, t in PAIRS]}
    datasets.Dataset.from_dict(rows).save_to_disk(str(tmp_path / "single"))
    hub_shape = {"translation": [{"de": s, "en": t} for s, t in PAIRS[:5]]}
    datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict(rows),
            "validation": datasets.Dataset.from_dict(hub_shape),
            "test": datasets.Dataset.from_dict({"de": ["a"], "en": ["b"]}),
        }
    ).save_to_disk(str(tmp_path / "dict"))
    assert read(str(tmp_path / "single")) == PAIRS
    assert read(str(tmp_path / "dict"), role="train") == PAIRS
    assert read(str(tmp_path / "dict"), role="valid") == PAIRS[:5]  # validation -> valid
    assert read(str(tmp_path / "dict"), role="newstest") == [("a", "b")]  # falls back to "test"
    assert read(f"{tmp_path / 'dict'}@validation", role="train") == PAIRS[:5]


def test_hf_spec_loads_through_load_dataset(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`hf:NAME` goes through datasets.load_dataset; offline, NAME is a local folder of files."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    folder = tmp_path / "hub_like"
    folder.mkdir()
    for split, rows in (("train", PAIRS), ("validation", PAIRS[:3]), ("test", PAIRS[3:6])):
        lines = "".join(json.dumps({"translation": {"de": s, "en": t}}) + "\n" for s, t in rows)
        (folder / f"{split}.jsonl").write_text(lines)
    assert read(f"hf:{folder}") == PAIRS
    assert read(f"hf:{folder}", role="valid") == PAIRS[:3]
    assert read(f"hf:{folder}", role="test_2016") == PAIRS[3:6]
    assert read(f"hf:{folder}@test", role="train") == PAIRS[3:6]


def test_spec_forms_parse() -> None:
    spec = parse_spec("hf:wmt14:de-en@validation", "de", "en")
    assert (spec.kind, spec.name, spec.config, spec.split) == ("hf", "wmt14", "de-en", "validation")
    assert default_split_name("data/raw/newstest2014") == "newstest2014"
    assert default_split_name("a/t.de.gz,a/t.en.gz") == "t"
    assert default_split_name("x/flickr.tsv") == "flickr"
    assert default_split_name("hf:wmt14:de-en@test") == "test"


@pytest.mark.skipif(not (MULTI30K / "train.de.gz").is_file(), reason="Multi30k not present")
def test_multi30k_files_read_as_they_are() -> None:
    sizes = {}
    for role, prefix in (("train", "train"), ("valid", "val"), ("test", "test_2016_flickr")):
        raw = read_pairs(parse_spec(str(MULTI30K / prefix), "de", "en"), CFG, role)
        cleaned = clean_pairs(raw, CFG, filter_pairs=role == "train")
        sizes[role] = len(cleaned)
        assert not any(cleaned.dropped.values())
    assert sizes == {"train": 29_000, "valid": 1_014, "test": 1_000}


# ---- bad input ----------------------------------------------------------------------------------


def one_line(exc: pytest.ExceptionInfo[DataError]) -> str:
    message = str(exc.value)
    assert "\n" not in message
    return message


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(DataError) as exc:
        parse_spec(str(tmp_path / "nothing"), "de", "en")
    assert f"{tmp_path / 'nothing.de'}: file not found" in one_line(exc)
    (tmp_path / "a.de").write_text("x\n")
    with pytest.raises(DataError) as exc:
        parse_spec(f"{tmp_path / 'a.de'},{tmp_path / 'a.en'}", "de", "en")
    assert f"{tmp_path / 'a.en'}: file not found" in one_line(exc)
    with pytest.raises(DataError, match="missing.tsv: file not found"):
        parse_spec(str(tmp_path / "missing.tsv"), "de", "en")


def test_line_count_mismatch_names_both_counts(tmp_path: Path) -> None:
    (tmp_path / "m.de").write_text("eins\nzwei\ndrei\n")
    (tmp_path / "m.en").write_text("one\ntwo\n")
    with pytest.raises(DataError) as exc:
        read(str(tmp_path / "m"))
    message = one_line(exc)
    assert f"{tmp_path / 'm.de'} has 3 lines" in message
    assert f"{tmp_path / 'm.en'} has 2" in message


def test_invalid_utf8_names_the_line_and_offers_replace(tmp_path: Path) -> None:
    (tmp_path / "u.de").write_bytes(b"gut\nauch gut\nkaputt \xff hier\n")
    (tmp_path / "u.en").write_text("good\nalso good\nbroken here\n")
    with pytest.raises(DataError) as exc:
        read(str(tmp_path / "u"))
    message = one_line(exc)
    assert f"{tmp_path / 'u.de'}:3: not valid UTF-8" in message
    assert "--errors replace" in message
    pairs = read(str(tmp_path / "u"), cfg=PrepareConfig(errors="replace"))
    assert pairs[2] == ("kaputt \ufffd hier", "broken here")


def test_unknown_columns_and_keys_list_what_was_found(tmp_path: Path) -> None:
    (tmp_path / "fr.tsv").write_text("de\tfr\nhallo\tbonjour\n")
    with pytest.raises(DataError) as exc:
        read(str(tmp_path / "fr.tsv"))
    assert "no column named 'en'" in one_line(exc) and "found: de, fr" in one_line(exc)

    (tmp_path / "keys.jsonl").write_text(json.dumps({"source": "a", "target": "b"}) + "\n")
    with pytest.raises(DataError) as exc:
        read(str(tmp_path / "keys.jsonl"))
    assert "keys.jsonl:1" in one_line(exc) and "found: source, target" in one_line(exc)

    (tmp_path / "nested.jsonl").write_text(
        json.dumps({"translation": {"de": "a", "fr": "b"}}) + "\n"
    )
    with pytest.raises(DataError, match="inside 'translation'; found: de, fr"):
        read(str(tmp_path / "nested.jsonl"))

    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    pq.write_table(pa.table({"de": ["a"], "es": ["b"]}), tmp_path / "t.parquet")
    with pytest.raises(DataError, match="found: de, es"):
        read(str(tmp_path / "t.parquet"))


def test_bad_table_rows_name_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "rows.tsv").write_text("de\ten\na\tb\nc\td\te\n")
    with pytest.raises(DataError, match=r"rows.tsv:3: expected 2 tab-separated columns, found 3"):
        read(str(tmp_path / "rows.tsv"))
    (tmp_path / "bad.jsonl").write_text('{"de": "a", "en": "b"}\n{"de": \n')
    with pytest.raises(DataError, match=r"bad.jsonl:2: not valid JSON"):
        read(str(tmp_path / "bad.jsonl"))


def test_missing_split_lists_the_splits(tmp_path: Path) -> None:
    import datasets

    one = datasets.Dataset.from_dict({"de": ["a"], "en": ["b"]})
    datasets.DatasetDict({"train": one}).save_to_disk(str(tmp_path / "d"))
    with pytest.raises(DataError, match="no split for valid .*found: train"):
        read(str(tmp_path / "d"), role="valid")


# ---- cleaning -----------------------------------------------------------------------------------


def test_clean_text_normalises_and_collapses_whitespace() -> None:
    assert clean_text("  ｆｕｌｌ\u00a0width\t\tﬁne  ", CFG) == "full width fine"
    assert clean_text("Ａ  b", PrepareConfig(normalize=False)) == "Ａ b"
    assert clean_text("Der Hund", PrepareConfig(lowercase=True)) == "der hund"


def test_length_units() -> None:
    assert text_length("a b c", "words") == 3
    assert text_length("初めに神は天と地とを創造された。", "auto") == 4  # 16 chars / 4
    assert text_length("abcdefghi", "chars") == 3
    assert text_length("", "auto") == 0


def test_filters_report_each_reason(tmp_path: Path) -> None:
    from nmt.data.corpus import Pairs

    src = [
        "a b",
        "",
        "x",
        "eins zwei drei",
        "a b",
        "one two three four five six seven eight nine ten",
    ]
    tgt = ["c d", "leer", "y", "one", "c d", "z"]
    pairs = Pairs(src, tgt, "mem", read=len(src))
    cfg = PrepareConfig(max_len=8, max_ratio=2.0, dedup=True)
    cleaned = clean_pairs(pairs, cfg)
    assert list(zip(cleaned.src, cleaned.tgt, strict=True)) == [("a b", "c d"), ("x", "y")]
    assert cleaned.dropped == {
        "empty": 1,
        "too_short": 0,
        "too_long": 1,
        "ratio": 1,
        "duplicate": 1,
    }
    # Valid / test sets keep every pair, cleaned only.
    assert len(clean_pairs(pairs, cfg, filter_pairs=False)) == len(src)
