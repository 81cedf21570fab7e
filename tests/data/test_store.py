"""`nmt.pipeline.prepare` and nmt.data.store: the prepared directory, its cache, its atomicity."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from data_support import MULTI30K, tiny_config, write_corpus

from nmt.config import EOS_ID, PrepareConfig, load_yaml
from nmt.data import store
from nmt.data.batching import TokenBatchSampler
from nmt.data.spm import Tokenizer
from nmt.data.store import PreparedData, load_prepared
from nmt.errors import DataError
from nmt.io import sha256_file
from nmt.pipeline.prepare import prepare


def run(
    cfg: PrepareConfig, specs: dict[str, str], out: Path, overwrite: bool = False
) -> PreparedData:
    return prepare(cfg, specs["train"], specs["valid"], {"test": specs["test"]}, out, overwrite)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, str], PreparedData]:
    root = tmp_path_factory.mktemp("corpus")
    specs = write_corpus(root)
    return specs, run(tiny_config(), specs, root / "out")


def test_layout_manifest_and_columns(prepared: tuple[dict[str, str], PreparedData]) -> None:
    _, data = prepared
    files = {p.name for p in data.path.iterdir()}
    assert files == {
        "manifest.json",
        "config.yaml",
        "stats.json",
        "spm.model",
        "spm.vocab",
        "splits",
        ".nmt-output.json",  # what `prepare --overwrite` checks before replacing the folder
    }
    assert not list(data.path.parent.glob(".out.*"))  # no temp dirs left behind
    m = data.manifest
    assert (data.src_lang, data.tgt_lang, data.shared_vocab) == ("de", "en", True)
    assert data.src_vocab_size == data.tgt_vocab_size == 60
    assert data.src_spm_path == data.tgt_spm_path == data.path / "spm.model"
    assert m["special_ids"] == {"pad": 0, "unk": 1, "bos": 2, "eos": 3}
    assert m["splits"]["train"]["pairs"] == 300 and data.split_names == ["train", "valid", "test"]
    assert m["config"]["vocab_size"] == 60 and m["nmt_version"]
    files_in = m["inputs"]["train"]["files"]
    assert [Path(f["path"]).name for f in files_in] == ["train.de", "train.en"]
    assert files_in[0]["sha256"] == sha256_file(Path(files_in[0]["path"]))
    assert load_yaml(data.path / "config.yaml")["vocab_size"] == 60
    assert len(data.hash) == 64 and data.hash == m["hash"]

    tok = Tokenizer.load(data.src_spm_path)
    for name in data.split_names:
        split = data.split(name)
        assert set(split.column_names) >= {"src", "tgt", "src_ids", "tgt_ids"}
        assert str(split.features["src_ids"].feature.dtype) == "int32"
        row = split[0]
        assert row["src_ids"] == tok.encode(row["src"]) and EOS_ID not in row["src_ids"]
        assert tok.decode(row["tgt_ids"]) == row["tgt"]
        src_lens, tgt_lens = data.lengths(name)
        assert src_lens.tolist() == [len(ids) for ids in split["src_ids"]]
        assert len(tgt_lens) == len(split)
    with pytest.raises(DataError, match="no split 'dev'; it has train, valid, test"):
        data.split("dev")


def test_stats(prepared: tuple[dict[str, str], PreparedData]) -> None:
    _, data = prepared
    stats = json.loads((data.path / "stats.json").read_text())
    train = stats["train"]
    assert train["pairs"] == train["read"] == 300 and sum(train["dropped"].values()) == 0
    src_lens, tgt_lens = data.lengths("train")
    assert train["src"]["tokens"] == int(src_lens.sum()) and train["tgt"]["length"]["max"] == int(
        tgt_lens.max()
    )
    expected = TokenBatchSampler(src_lens, tgt_lens, 4096, seed=data.config.seed).padding_fraction(
        0
    )
    assert train["padding_fraction_4096"] == round(expected, 4)
    # Counted from histograms while encoding; the same as numpy on every length.
    for side, lens in (("src", src_lens), ("tgt", tgt_lens)):
        length = train[side]["length"]
        assert length["mean"] == round(float(lens.mean()), 2)
        assert [length[f"p{q}"] for q in (50, 90, 95, 99)] == [
            int(np.percentile(lens, q)) for q in (50, 90, 95, 99)
        ]
    assert stats["test"]["pairs"] == 20 and stats["test"]["dropped"] == {}


def test_rerun_reuses_and_same_input_gives_same_ids(
    prepared: tuple[dict[str, str], PreparedData],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    specs, data = prepared
    stamp = (data.path / "manifest.json").stat().st_mtime_ns
    again = run(tiny_config(), specs, data.path)
    assert "reusing" in capsys.readouterr().out
    assert (data.path / "manifest.json").stat().st_mtime_ns == stamp and again.hash == data.hash
    # num_proc changes speed, not contents: still a cache hit.
    assert run(tiny_config(num_proc=2), specs, data.path).hash == data.hash

    other = run(tiny_config(), specs, tmp_path / "second")
    assert other.hash == data.hash
    assert other.src_spm_path.read_bytes() == data.src_spm_path.read_bytes()
    for name in data.split_names:
        assert other.split(name)["src_ids"] == data.split(name)["src_ids"]
        assert other.split(name)["tgt_ids"] == data.split(name)["tgt_ids"]


def test_changed_config_refuses_without_overwrite(tmp_path: Path) -> None:
    specs = write_corpus(tmp_path / "raw", n_train=120)
    first = run(tiny_config(), specs, tmp_path / "out")
    with pytest.raises(DataError) as exc:
        run(tiny_config(vocab_size=50), specs, tmp_path / "out")
    message = str(exc.value)
    assert "changed: vocab_size" in message and "--overwrite" in message and "\n" not in message
    assert load_prepared(tmp_path / "out").hash == first.hash  # untouched
    second = run(tiny_config(vocab_size=50), specs, tmp_path / "out", overwrite=True)
    assert second.src_vocab_size == 50 and second.hash != first.hash
    # A changed input file is a change too.
    Path(specs["valid"] + ".en").write_text(Path(specs["valid"] + ".en").read_text().upper())
    with pytest.raises(DataError, match="changed: input valid"):
        run(tiny_config(vocab_size=50), specs, tmp_path / "out")


def test_crash_leaves_no_half_written_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    specs = write_corpus(tmp_path / "raw", n_train=120)

    def crash(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(store, "write_manifest", crash)
    with pytest.raises(KeyboardInterrupt):
        run(tiny_config(), specs, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["raw"]
    monkeypatch.undo()
    good = run(tiny_config(), specs, tmp_path / "out")
    monkeypatch.setattr(store, "write_manifest", crash)
    with pytest.raises(KeyboardInterrupt):
        run(tiny_config(vocab_size=50), specs, tmp_path / "out", overwrite=True)
    assert load_prepared(tmp_path / "out").hash == good.hash  # the old directory survives


def test_empty_after_filtering(tmp_path: Path) -> None:
    specs = write_corpus(tmp_path / "raw", n_train=50)
    with pytest.raises(DataError) as exc:
        run(tiny_config(min_len=1, max_len=2), specs, tmp_path / "out")
    message = str(exc.value)
    assert message.startswith(f"{specs['train']}.de,{specs['train']}.en: no train pairs left")
    assert "too_long 50" in message
    assert not (tmp_path / "out").exists()


def test_vocab_too_large_through_prepare(tmp_path: Path) -> None:
    specs = write_corpus(tmp_path / "raw", n_train=50)
    with pytest.raises(DataError, match=r"vocab size 8000 is larger .* accepts at most \d+"):
        run(tiny_config(vocab_size=8000), specs, tmp_path / "out")


def test_separate_vocabularies(tmp_path: Path) -> None:
    specs = write_corpus(tmp_path / "raw", n_train=120)
    data = run(tiny_config(joint_vocab=False, vocab_size=40), specs, tmp_path / "out")
    assert not data.shared_vocab
    assert (data.src_spm_path.name, data.tgt_spm_path.name) == ("spm.de.model", "spm.en.model")
    assert (
        data.tgt_tokenizer().decode(data.split("valid")[0]["tgt_ids"])
        == data.split("valid")[0]["tgt"]
    )


def test_load_prepared_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="prepared data not found"):
        load_prepared(tmp_path / "nope")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "x.txt").write_text("x")
    with pytest.raises(DataError, match="not a prepared data directory"):
        load_prepared(tmp_path / "junk")
    specs = write_corpus(tmp_path / "raw", n_train=50)
    with pytest.raises(DataError, match="not empty and holds no prepared data"):
        run(tiny_config(), specs, tmp_path / "junk", overwrite=True)


@pytest.mark.skipif(not (MULTI30K / "train.de.gz").is_file(), reason="Multi30k not present")
def test_multi30k_8k_joint_unigram(tmp_path: Path) -> None:
    data = prepare(
        PrepareConfig(vocab_size=8000),
        str(MULTI30K / "train"),
        str(MULTI30K / "val"),
        {"test_2016_flickr": str(MULTI30K / "test_2016_flickr")},
        tmp_path / "m30k",
        overwrite=False,
    )
    stats = data.stats
    assert [stats[s]["pairs"] for s in data.split_names] == [29_000, 1_014, 1_000]
    assert sum(stats["train"]["dropped"].values()) == 0
    assert data.src_vocab_size == 8000
    assert stats["train"]["padding_fraction_4096"] < 0.10


def test_write_text_streams_in_chunks_and_keeps_order(tmp_path: Path) -> None:
    pairs = ((f"quelle {i}", f"ziel {i}\u2028{i}") for i in range(45))  # a generator: read once
    text = store.write_text(tmp_path / "t.arrow", pairs, chunk=20)
    assert len(text) == 45
    assert [chunk.num_rows for chunk in store.iter_chunks(text)] == [20, 20, 5]
    assert list(store.iter_column(text, "src")) == [f"quelle {i}" for i in range(45)]
    assert list(store.iter_column(text, "tgt"))[44] == "ziel 44\u202844"
    # Selected rows (a SentencePiece sample), across chunk borders.
    rows = np.array([0, 19, 20, 21, 44])
    assert list(store.iter_column(text, "src", rows)) == [f"quelle {i}" for i in rows]
    empty = store.write_text(tmp_path / "e.arrow", iter(()))
    assert len(empty) == 0 and list(store.iter_column(empty, "src")) == []
