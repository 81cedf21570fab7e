"""Inputs a hostile or careless user gives: a pipe or FIFO read once (every line translated),
/dev/zero and lines of megabytes refused with their line number before they reach SentencePiece,
text that is not Unicode named, a full disk under --attention-out named, and a fine-tuning run
with nothing left to train refused; one line each, no traceback, nothing left behind."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from reliability_support import assert_refused, nmt, snapshot

from nmt.data.corpus import MAX_LINE_BYTES
from nmt.errors import DataError
from nmt.inference import Translator

LINES = 400  # the reported case lost all 5,000; a few hundred show it as well
LONG = "a" * (MAX_LINE_BYTES + 10)


@pytest.fixture()
def many(tmp_path: Path) -> Path:
    path = tmp_path / "many.de"
    path.write_text("".join(f"ba ce {'do ' * (n % 3)}fe\n" for n in range(LINES)), "utf-8")
    return path


def run(argv: list[str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=180, env=env)


def run_nmt(args: list[str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return run([sys.executable, "-m", "nmt.cli", *args], stdin)


# ---- 4. a pipe, /dev/stdin or a FIFO: read once, every line translated --------------------------


@pytest.mark.parametrize("kind", ["process substitution", "/dev/stdin"])
def test_a_pipe_given_as_the_input_is_read_once(
    tiny_transformer_run: Path, tmp_path: Path, many: Path, kind: str
) -> None:
    out = tmp_path / "out.en"
    common = f"{sys.executable} -m nmt.cli translate {tiny_transformer_run} --beam 1 -o {out}"
    if kind == "process substitution":
        done = run(["bash", "-c", f"{common} -i <(cat {many})"])
    else:
        done = run_nmt(["translate", str(tiny_transformer_run), "--beam", "1", "-o", str(out),
                        "-i", "/dev/stdin"], many.read_text())  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    assert len(out.read_text().splitlines()) == LINES
    assert f"translated {LINES:,} lines" in done.stderr


def test_a_named_fifo_is_read_once(tiny_transformer_run: Path, tmp_path: Path, many: Path):
    fifo = tmp_path / "fifo.de"
    os.mkfifo(fifo)
    writer = threading.Thread(target=lambda: fifo.write_bytes(many.read_bytes()), daemon=True)
    writer.start()
    out = tmp_path / "out.en"
    result = nmt("translate", tiny_transformer_run, "-i", fifo, "-o", out, "--beam", 1)
    writer.join(60)
    assert result.exit_code == 0, result.output
    assert len(out.read_text().splitlines()) == LINES


def test_force_refuses_a_pipe_it_would_read_twice(
    tiny_transformer_run: Path, tmp_path: Path, many: Path
) -> None:
    fifo = tmp_path / "fifo.en"
    os.mkfifo(fifo)
    before = snapshot(tmp_path)
    assert_refused(nmt("translate", tiny_transformer_run, "-i", many, "--force", fifo), 2,
                   f"--force {fifo}: is a pipe or device, read once")  # fmt: skip
    assert snapshot(tmp_path) == before


# ---- 5, 6. /dev/zero and huge lines: refused at the byte limit, before tokenising ----------------


def test_dev_zero_is_refused_at_the_line_limit(tiny_transformer_run: Path, tmp_path: Path):
    if not stat.S_ISCHR(os.stat("/dev/zero").st_mode):
        pytest.skip("needs /dev/zero")
    out = tmp_path / "out.en"
    result = nmt("translate", tiny_transformer_run, "-i", "/dev/zero", "-o", out)
    assert_refused(result, 1, "/dev/zero:1: a line longer than 1,048,576 bytes")
    assert not out.exists()


def test_a_huge_line_is_refused_with_its_number_before_the_model_loads(
    tiny_transformer_run: Path, tmp_path: Path
) -> None:
    src = tmp_path / "huge.de"
    src.write_text(f"ba ce\nfo ge\n{LONG}\nba\n", encoding="utf-8")
    result = nmt("translate", tiny_transformer_run, "-i", src, "-o", tmp_path / "out.en")
    assert_refused(result, 1, f"{src}:3: a line longer than 1,048,576 bytes")
    assert "loaded" not in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["huge.de"]


def test_a_line_at_the_limit_is_still_read(tiny_transformer_run: Path, tmp_path: Path) -> None:
    src = tmp_path / "edge.de"
    src.write_text("ba " * (MAX_LINE_BYTES // 3) + "\nce\n", encoding="utf-8")
    out = tmp_path / "out.en"
    result = nmt("translate", tiny_transformer_run, "-i", src, "-o", out, "--beam", 1)
    assert result.exit_code == 0, result.output  # cut to the model's length, as any long line
    assert len(out.read_text().splitlines()) == 2


# ---- 18 and the API's own bound: what Translator.translate refuses, it names -------------------


@pytest.fixture(scope="module")
def translator(tiny_transformer_run: Path) -> Translator:
    return Translator.load(tiny_transformer_run, device="cpu")


@pytest.mark.parametrize(
    ("line", "needle"),
    [("ba \ud800 ce", "<input>:2: not valid Unicode (lone surrogate U+D800 at character 4)"),
     (LONG, "<input>:2: a line longer than 1,048,576 bytes")],
    ids=["lone surrogate", "huge line"],
)  # fmt: skip
def test_translator_names_a_line_it_cannot_take(
    translator: Translator, line: str, needle: str
) -> None:
    with pytest.raises(DataError) as error:
        translator.translate(["ba ce", line])
    assert needle in str(error.value)
    with pytest.raises(TypeError, match="<input>:1: a line must be a str"):
        translator.translate([b"ba ce"])  # type: ignore[list-item]
    assert translator.translate(["ba ce"])  # still usable


# ---- 16. a full disk under --attention-out names that file, without a traceback ------------------


def test_full_disk_under_attention_out_names_it(tiny_transformer_run: Path, tmp_path: Path):
    if not (os.path.exists("/dev/full") and stat.S_ISCHR(os.stat("/dev/full").st_mode)):
        pytest.skip("needs /dev/full")
    src = tmp_path / "in.de"
    src.write_text("ba ce do\nfo ge\nha ke lo\n", encoding="utf-8")
    attention = tmp_path / "attn.npz"
    attention.symlink_to("/dev/full")
    done = run_nmt(["translate", str(tiny_transformer_run), "-i", str(src), "-o", os.devnull,
                    "--attention-out", str(attention)])  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr and "Exception ignored" not in done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        f"error: {attention}: no space left on the device"
    )
    assert attention.is_symlink() and sorted(p.name for p in tmp_path.iterdir()) == [
        "attn.npz", "in.de"]  # fmt: skip


# ---- 15. fine-tuning with every part frozen ------------------------------------------------------


def test_freezing_every_part_leaves_nothing_to_train(
    tiny_transformer_run: Path, tiny_prepared: Path, tmp_path: Path
) -> None:
    before = snapshot(tiny_transformer_run)
    result = nmt("train", "--init", tiny_transformer_run, "--data", tiny_prepared, "--out",
                 tmp_path / "ft", "--set", "train.freeze=[encoder,decoder,embeddings]")  # fmt: skip
    assert_refused(result, 2, "train.freeze=[encoder, decoder, embeddings]: nothing left to train")
    assert not (tmp_path / "ft").exists() and snapshot(tiny_transformer_run) == before


# ---- commands that read a file whole say so of a pipe or device --------------------------------


@pytest.mark.parametrize("command", ["evaluate", "align-eval", "plot-metrics"])
def test_a_device_where_a_file_is_read_whole_is_named(tmp_path: Path, command: str) -> None:
    if not stat.S_ISCHR(os.stat("/dev/zero").st_mode):
        pytest.skip("needs /dev/zero")
    ref = tmp_path / "ref.en"
    ref.write_text("BA\n", encoding="utf-8")
    args = {"evaluate": ["--hyp", "/dev/zero", "--ref", ref],
            "align-eval": ["--gold", "/dev/zero", "--hyp", ref],
            "plot-metrics": ["/dev/zero", "--out", tmp_path / "c.png"]}[command]  # fmt: skip
    assert_refused(nmt(command, *args), 1, "/dev/zero: not a regular file (a pipe or device)")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ref.en"]


# ---- 7. JSON nested deeper than Python reads: one line wherever JSON is read ---------------------

DEEP = "[" * 100_000


@pytest.mark.parametrize("command", ["prepare", "translate", "plot"])
def test_deeply_nested_json_is_one_line(
    tiny_transformer_run: Path, tmp_path: Path, command: str
) -> None:
    deep = tmp_path / "deep.jsonl"
    deep.write_text('{"de": "ba", "en": "BA"}\n' + DEEP + "\n", encoding="utf-8")
    args = {
        "prepare": ["prepare", "--src-lang", "de", "--tgt-lang", "en", "--train", deep,
                    "--valid", deep, "--out", tmp_path / "prep"],
        "translate": ["translate", tiny_transformer_run, "-i", deep, "--input-format", "jsonl"],
        "plot": ["plot", deep, "--out", tmp_path / "a.png"],
    }[command]  # fmt: skip
    needle = {"prepare": "deep.jsonl:2: not valid JSON (nested too deeply)",
              "translate": "deep.jsonl:1: expected an object with a string",
              "plot": "deep.jsonl:2: not JSON (nested too deeply)"}[command]  # fmt: skip
    if command == "translate":
        deep.write_text(DEEP + "\n", encoding="utf-8")
        needle = "deep.jsonl:1: not JSON (nested too deeply"
    assert_refused(nmt(*args), 1, needle)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["deep.jsonl"]


# ---- 8. a model whose scores are not finite: one line, never NaN in JSON -------------------------


@pytest.fixture(scope="module")
def overflowing_run(tiny_transformer_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny run with finite but huge output weights: its logits overflow to infinity, and
    every score is NaN (as fp16 overflow would make them)."""
    import shutil

    import torch

    run = tmp_path_factory.mktemp("overflow") / "run"
    shutil.copytree(tiny_transformer_run, run)
    payload = torch.load(run / "best.pt", weights_only=True)
    payload["model"]["output.weight"] = payload["model"]["output.weight"] * 1e37
    torch.save(payload, run / "best.pt")
    return run


@pytest.mark.parametrize("how", ["text, beam 3", "jsonl, greedy"])
def test_non_finite_scores_are_one_line(overflowing_run: Path, tmp_path: Path, how: str) -> None:
    src = tmp_path / "in.de"
    src.write_text("ba ce do\nfo ge\n", encoding="utf-8")
    extra = ["--output-format", "jsonl", "--beam", "1"] if how.startswith("jsonl") else []
    result = nmt("translate", overflowing_run, "-i", src, "-o", tmp_path / "out", *extra)
    assert_refused(result, 1, f"{src}:1: the model's scores are NaN or infinite (fp32); its "
                   "weights are damaged or overflow at this precision")  # fmt: skip
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.de"]


def test_weights_that_are_nan_are_refused_at_load(
    tiny_transformer_run: Path, tmp_path: Path
) -> None:
    import shutil

    import torch

    run = tmp_path / "run"
    shutil.copytree(tiny_transformer_run, run)
    payload = torch.load(run / "best.pt", weights_only=True)
    payload["model"]["encoder_layers.0.ffn.fc1.weight"][0, 0] = float("nan")
    torch.save(payload, run / "best.pt")
    result = nmt("translate", run, input="ba ce\n")
    needle = "encoder_layers.0.ffn.fc1.weight holds NaN or infinite values; the model is damaged"
    assert_refused(result, 1, f"{run / 'best.pt'}: {needle}")


# ---- 10. a path that is not a regular file is named for what it is -------------------------------


@pytest.mark.parametrize(
    "case", ["files spec on a device", "files spec on a folder", "prefix on a FIFO",
             "config from a pipe", "config on a device", "plot of a folder", "text named .npz",
             "test name with a slash"],
)  # fmt: skip
def test_what_is_not_a_file_is_named(tiny_prepared: Path, tmp_path: Path, case: str) -> None:
    raw = tmp_path / "raw"
    raw.mkdir()
    for side, text in (("de", "ba ce\n"), ("en", "CE BA\n")):
        (raw / f"train.{side}").write_text(text * 5, encoding="utf-8")
    prepare = ["prepare", "--src-lang", "de", "--tgt-lang", "en", "--valid", raw / "train",
               "--out", tmp_path / "prep", "--train"]  # fmt: skip
    if case == "prefix on a FIFO":
        os.mkfifo(tmp_path / "fifo")
    if case == "text named .npz":
        (tmp_path / "attn.npz").write_text("ba ce\n", encoding="utf-8")
    args, code, needle = {
        "files spec on a device": (prepare + [f"/dev/zero,{raw / 'train.en'}"], 1,
                                   "/dev/zero: not a regular file (a pipe or device)"),
        "files spec on a folder": (prepare + [f"{raw},{raw / 'train.en'}"], 1,
                                   f"{raw}: is a folder, not a file"),
        "prefix on a FIFO": (prepare + [tmp_path / "fifo"], 1,
                             f"{tmp_path / 'fifo'}: not a regular file (a pipe or device)"),
        "config from a pipe": (["train", "/dev/stdin", "--data", tiny_prepared, "--out",
                                tmp_path / "run"], 2, "/dev/stdin: not a regular file"),
        "config on a device": (["train", "/dev/zero", "--data", tiny_prepared, "--out",
                                tmp_path / "run"], 2, "/dev/zero: not a regular file"),
        "plot of a folder": (["plot", raw, "--out", tmp_path / "a.png"], 1,
                             f"{raw}: is a folder, not a file"),
        "text named .npz": (["plot", tmp_path / "attn.npz", "--out", tmp_path / "a.png"], 1,
                            "attn.npz: not an attention file written by nmt translate (not .npz)"),
        "test name with a slash": (prepare + [raw / "train", "--test", f"a/b={raw / 'train'}"], 2,
                                   "--test a/b=...: a test name is letters, digits, _ . -"),
    }[case]  # fmt: skip
    before = snapshot(tmp_path)
    stdin = subprocess.PIPE if case == "config from a pipe" else None
    if stdin is None:
        line = assert_refused(nmt(*args), code, needle)
    else:  # /dev/stdin must be a real pipe: a child process
        done = run_nmt([str(a) for a in args], stdin="model: {}\n")
        assert done.returncode == code and needle in done.stderr, done.stderr
        line = done.stderr.strip()
    assert "not found" not in line and snapshot(tmp_path) == before
