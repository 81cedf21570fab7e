"""Damaged or empty inputs stop a command in one line naming the file, with a non-zero exit and
every file left as it was: run and prepared-data metadata, Arrow splits cut short, a checkpoint
holding Python objects, empty or non-UTF-8 text, JSONL corpora with numbers for sentences and
attention files whose arrays are missing or do not fit their labels. A line torn at the end of
metrics.jsonl by a kill is the one damage that is tolerated: the run resumes."""

from __future__ import annotations

import datetime
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from reliability_support import assert_refused, nmt, snapshot, tiny_prepare, tiny_run_yaml


@pytest.fixture()
def run_copy(tiny_transformer_run: Path, tmp_path: Path) -> Path:
    """A copy of the session's tiny run, to damage."""
    return Path(shutil.copytree(tiny_transformer_run, tmp_path / "run"))


@pytest.fixture()
def prepared_copy(tiny_prepared: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(tiny_prepared, tmp_path / "prepared"))


def resume(run: Path, steps: int = 121) -> object:
    return nmt("train", "--resume", run, "--set", f"train.max_steps={steps}")


# ---- run metadata ---------------------------------------------------------------------------

DATA_JSON = {
    "not_json": b'{"path": "/x", "hash',
    "no_keys": b"{}\n",
    "a_list": b"[1, 2]\n",
    "not_utf8": b'{"path": "\xff\xfe"}\n',
}


@pytest.mark.parametrize("kind", sorted(DATA_JSON))
def test_resume_with_a_damaged_data_json(run_copy: Path, kind: str) -> None:
    (run_copy / "data.json").write_bytes(DATA_JSON[kind])
    before = snapshot(run_copy)
    assert_refused(resume(run_copy), 1, f"{run_copy / 'data.json'}: damaged")
    assert snapshot(run_copy) == before


def test_a_torn_last_line_of_metrics_does_not_block_resume(run_copy: Path) -> None:
    metrics = run_copy / "metrics.jsonl"
    with open(metrics, "a", encoding="utf-8") as handle:
        handle.write('{"kind": "train", "step": 121, "lo')  # killed in the middle of a write
    result = resume(run_copy)
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in metrics.read_text(encoding="utf-8").splitlines()]
    assert rows[-1]["kind"] == "summary" and rows[-1]["step"] == 121


@pytest.mark.parametrize(
    "first", [b'{"kind": "train", "st\n', b"\xff\n", b"5\n"], ids=["torn", "not_utf8", "number"]
)
def test_resume_refuses_a_metrics_log_damaged_before_its_end(run_copy: Path, first: bytes) -> None:
    metrics = run_copy / "metrics.jsonl"
    metrics.write_bytes(first + metrics.read_bytes())
    before = snapshot(run_copy)
    assert_refused(resume(run_copy), 1, f"{metrics}: damaged")
    assert snapshot(run_copy) == before


# ---- prepared data ----------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["tokenizers", "splits", "src_lang"])
def test_train_on_a_manifest_missing_a_key(prepared_copy: Path, tmp_path: Path, key: str) -> None:
    path = prepared_copy / "manifest.json"
    manifest = json.loads(path.read_text(encoding="utf-8"))
    del manifest[key]
    path.write_text(json.dumps(manifest), encoding="utf-8")
    config = tiny_run_yaml(tmp_path / "run.yaml")
    before = snapshot(tmp_path)
    result = nmt("train", config, "--data", prepared_copy, "--out", tmp_path / "out")
    assert_refused(result, 1, f"{path}: damaged manifest ('{key}")
    assert snapshot(tmp_path) == before


def cut_arrow_file(prepared: Path, split: str) -> Path:
    (arrow,) = (prepared / "splits" / split).glob("*.arrow")
    data = arrow.read_bytes()
    arrow.write_bytes(data[: len(data) // 2])
    return arrow


def test_train_on_a_truncated_arrow_split(prepared_copy: Path, tmp_path: Path) -> None:
    cut_arrow_file(prepared_copy, "train")
    config = tiny_run_yaml(tmp_path / "run.yaml")
    before = snapshot(tmp_path)
    result = nmt("train", config, "--data", prepared_copy, "--out", tmp_path / "out")
    assert_refused(result, 1, f"{prepared_copy / 'splits' / 'train'}: damaged split")
    assert snapshot(tmp_path) == before


def test_prepare_does_not_reuse_a_truncated_arrow_split(tmp_path: Path) -> None:
    prepare = tiny_prepare(tmp_path)

    first = prepare()
    assert first.exit_code == 0, first.output
    cut_arrow_file(tmp_path / "prep", "valid")
    before = snapshot(tmp_path)
    assert_refused(prepare(), 1, "splits/valid: damaged split", "--overwrite")
    assert snapshot(tmp_path) == before


# ---- checkpoints --------------------------------------------------------------------------------


def test_a_checkpoint_with_python_objects_gets_no_hint_to_unpickle_it(tmp_path: Path) -> None:
    path = tmp_path / "odd.pt"
    torch.save({"format_version": 1, "model": {}, "when": datetime.date(2020, 1, 1)}, path)
    (tmp_path / "src.de").write_text("ba\n", encoding="utf-8")
    (tmp_path / "ref.en").write_text("BA\n", encoding="utf-8")
    before = snapshot(tmp_path)
    result = nmt("evaluate", path, "--src", tmp_path / "src.de", "--ref", tmp_path / "ref.en")
    line = assert_refused(result, 1, f"{path}: not a readable checkpoint", "Python objects")
    assert "weights_only" not in line and "weights_only" not in result.output
    assert snapshot(tmp_path) == before


# A field of a real checkpoint replaced by something nmt never writes there.
DAMAGED_FIELDS = {
    "spm_bytes": ("spm", b"garbage", "'spm' names no src tokenizer file"),
    "spm_path": ("spm", {"src": {"file": "../x.model", "sha256": "0"}}, "'spm' names no src"),
    "vocab_empty": ("vocab", {}, "'vocab' lacks positive src_vocab_size"),
    "vocab_text": ("vocab", {"src_vocab_size": "60", "tgt_vocab_size": 60}, "'vocab' lacks"),
    "model_list": ("model", [1, 2], "'model' is not a mapping of names to tensors"),
    "config_text": ("config", "transformer", "'config' is not a mapping"),
}


@pytest.mark.parametrize("kind", sorted(DAMAGED_FIELDS))
def test_a_checkpoint_with_a_foreign_field_is_refused_in_one_line(
    run_copy: Path, tmp_path: Path, kind: str
) -> None:
    field, value, said = DAMAGED_FIELDS[kind]
    payload = torch.load(run_copy / "best.pt", weights_only=True)
    payload[field] = value
    path = run_copy / "damaged.pt"
    torch.save(payload, path)
    (tmp_path / "src.de").write_text("ba\n", encoding="utf-8")
    before = snapshot(tmp_path)
    result = nmt("translate", path, "-i", tmp_path / "src.de", "-o", tmp_path / "out.en")
    assert_refused(result, 1, f"{path}: not an nmt checkpoint", said)
    assert snapshot(tmp_path) == before


# ---- text inputs ---------------------------------------------------------------------------------


def test_evaluate_of_empty_files(tmp_path: Path) -> None:
    for name in ("hyp.en", "ref.en"):
        (tmp_path / name).write_bytes(b"")
    result = nmt("evaluate", "--hyp", tmp_path / "hyp.en", "--ref", tmp_path / "ref.en")
    assert_refused(result, 1, f"{tmp_path / 'hyp.en'}: no lines to score")


def test_evaluate_of_a_non_utf8_reference(tmp_path: Path) -> None:
    (tmp_path / "hyp.en").write_text("A B\nA B\n", encoding="utf-8")
    (tmp_path / "ref.en").write_bytes(b"A B\nA \xff B\n")
    result = nmt("evaluate", "--hyp", tmp_path / "hyp.en", "--ref", tmp_path / "ref.en")
    said = f"{tmp_path / 'ref.en'}:2: not UTF-8 text (byte 3 of the line: invalid start byte)"
    assert_refused(result, 1, said)


GOLD = {
    "empty": (b"", "holds no gold links (0 lines)"),
    "no_links": (b"\n\n", "holds no gold links (2 lines)"),
    "not_utf8": (b"0-0 \xff\n", "not UTF-8"),
}


@pytest.mark.parametrize("kind", sorted(GOLD))
def test_align_eval_of_a_useless_gold_file(tmp_path: Path, kind: str) -> None:
    data, needle = GOLD[kind]
    (tmp_path / "gold.align").write_bytes(data)
    (tmp_path / "hyp.align").write_bytes(b"\n" * data.count(b"\n"))
    result = nmt("align-eval", "--gold", tmp_path / "gold.align", "--hyp", tmp_path / "hyp.align",
                 "--report", tmp_path / "aer.json")  # fmt: skip
    assert_refused(result, 1, str(tmp_path / "gold.align"), needle)
    assert not (tmp_path / "aer.json").exists()


@pytest.mark.parametrize(
    ("value", "shown"),
    [("NaN", "NaN"), ("1e999", "Infinity"), ("-Infinity", "-Infinity"), ("42", "42"),
     ("true", "true")],
)  # fmt: skip
def test_prepare_refuses_a_jsonl_number_as_a_sentence(
    tmp_path: Path, value: str, shown: str
) -> None:
    good = [json.dumps({"de": f"ba ce {i}", "en": f"CE BA {i}"}) for i in range(6)]
    bad = '{"de": "ba ce", "en": ' + value + "}"
    (tmp_path / "pairs.jsonl").write_text("\n".join([*good, bad]) + "\n", encoding="utf-8")
    before = snapshot(tmp_path)
    result = nmt("prepare", "--src-lang", "de", "--tgt-lang", "en",
                 "--train", tmp_path / "pairs.jsonl", "--valid", tmp_path / "pairs.jsonl",
                 "--out", tmp_path / "prep")  # fmt: skip
    assert_refused(result, 1, f"{tmp_path / 'pairs.jsonl'}:7: expected a string", shown)
    assert snapshot(tmp_path) == before


# ---- attention files for `plot` ---------------------------------------------------------------


def write_npz(path: Path, **arrays: np.ndarray) -> Path:
    meta = json.dumps({"sentences": 1, "arch": "transformer"})
    np.savez(path, meta=np.array(meta), **arrays)
    return path


def good_arrays() -> dict[str, np.ndarray]:
    return {
        "src_0": np.array(["▁ba", "▁ce"]),
        "tgt_0": np.array(["▁CE"]),
        "attention_0": np.full((2, 3), 1 / 3, dtype=np.float32),
        "src_words_0": np.array(["ba", "ce"]),
        "tgt_words_0": np.array(["CE"]),
        "words_0": np.full((1, 2), 0.5, dtype=np.float32),
    }


NPZ = {
    "missing_array": ({"words_0": None}, "sentence 0 is missing or damaged"),
    "wrong_shape": ({"attention_0": np.ones((4, 4), np.float32)}, "attention has shape (4, 4)"),
    "labels_do_not_fit": ({"src_words_0": np.array(["ba"])}, "word attention has shape (1, 2)"),
    "one_dimension": ({"attention_0": np.ones(6, np.float32)}, "attention has shape (6,)"),
    "not_finite": ({"words_0": np.array([[np.nan, 1.0]], np.float32)}, "not finite"),
}


@pytest.mark.parametrize("kind", sorted(NPZ))
def test_plot_refuses_a_crafted_attention_file(tmp_path: Path, kind: str) -> None:
    changes, needle = NPZ[kind]
    arrays = good_arrays()
    for name, value in changes.items():
        if value is None:
            del arrays[name]
        else:
            arrays[name] = value
    path = write_npz(tmp_path / "attn.npz", **arrays)
    before = snapshot(tmp_path)
    result = nmt("plot", path, "--out", tmp_path / "p.png")
    assert_refused(result, 1, str(path), needle)
    assert snapshot(tmp_path) == before


def test_plot_draws_the_good_arrays(tmp_path: Path) -> None:
    """The crafted files above differ from this one, which plots, in one array each."""
    path = write_npz(tmp_path / "attn.npz", **good_arrays())
    result = nmt("plot", path, "--out", tmp_path / "p.png")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "p.png").stat().st_size > 0


def test_plot_refuses_a_non_utf8_jsonl_attention_file(tmp_path: Path) -> None:
    path = tmp_path / "attn.jsonl"
    path.write_bytes(b'{"index": 0, "src": ["\xff"]}\n')
    result = nmt("plot", path, "--out", tmp_path / "p.png")
    assert_refused(result, 1, f"{path}:1: not UTF-8 text (byte 23 of the line")
    assert not (tmp_path / "p.png").exists()
