"""No output replaces an input or the model: every writing command refuses, before any work and
in one line, an output that is (or resolves to, through a symlink, a hard link or a linked
folder) one of its inputs, a file of a run or prepared folder, or another output of the same
call; every file stays as it was, byte for byte."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from reliability_support import assert_refused, nmt, snapshot, tiny_run_yaml


@pytest.fixture()
def texts(tmp_path: Path) -> dict[str, Path]:
    files = {"src": ("a.de", "ba ce do\nfo ge\n"), "ref": ("a.en", "DO CE BA\nGE FO\n"),
             "gold": ("g.align", "0-0 1-1\n0-0\n"), "hyp": ("h.align", "0-0\n0-0\n")}  # fmt: skip
    out = {}
    for key, (name, text) in files.items():
        out[key] = tmp_path / name
        out[key].write_text(text, encoding="utf-8")
    return out


def refused_untouched(result_of: object, code: int, folders: list[Path], *needles: str) -> str:
    """Run the command (a callable), check its one-line refusal and that nothing under `folders`
    changed; the refusal comes before any model is loaded."""
    before = [snapshot(folder) for folder in folders]
    result = result_of()  # type: ignore[operator]
    line = assert_refused(result, code, *needles)
    assert "loaded" not in result.stderr  # refused before the model was read
    assert [snapshot(folder) for folder in folders] == before
    return line


# ---- 1. translate: no output over the model being loaded -----------------------------------------


@pytest.mark.parametrize(
    ("flag", "name"),
    [("-o", "best.pt"), ("-o", "last.pt"), ("-o", "spm.model"), ("-o", "config.yaml"),
     ("--alignments-out", "data.json"), ("--attention-out", "metrics.jsonl"),
     ("-o", "checkpoint_120.pt"), ("-o", "averaged.pt")],
)  # fmt: skip
def test_translate_output_onto_a_file_of_the_run(
    tiny_transformer_run: Path, tmp_path: Path, texts: dict[str, Path], flag: str, name: str
) -> None:
    run = tiny_transformer_run
    args = ["translate", run, "-i", texts["src"], flag, run / name]
    if flag != "-o":
        args += ["-o", tmp_path / "hyp.en"]
    refused_untouched(lambda: nmt(*args), 2, [run, tmp_path], f"{flag} {run / name}: is also",
                      f"a file of the run folder {run}")  # fmt: skip


@pytest.mark.parametrize("link", ["symlink", "hardlink", "linked folder", "dangling symlink"])
def test_translate_output_onto_the_model_through_a_link(
    tiny_transformer_run: Path, tmp_path: Path, texts: dict[str, Path], link: str
) -> None:
    run = tiny_transformer_run
    if link == "symlink":
        out = tmp_path / "model.txt"
        out.symlink_to(run / "best.pt")
    elif link == "hardlink":
        out = tmp_path / "copy.pt"
        os.link(run / "last.pt", out)
    elif link == "linked folder":
        (tmp_path / "alias").symlink_to(run, target_is_directory=True)
        out = tmp_path / "alias" / "best.pt"
    else:  # averaged.pt does not exist yet: the link resolves to where it would be
        out = tmp_path / "future.pt"
        out.symlink_to(run / "averaged.pt")
    line = refused_untouched(lambda: nmt("translate", run, "-i", texts["src"], "-o", out), 2,
                             [run, tmp_path], f"-o {out}: is")  # fmt: skip
    assert f"a file of the run folder {run}" in line


def test_translate_output_onto_its_input_through_a_hard_link(
    tiny_transformer_run: Path, tmp_path: Path, texts: dict[str, Path]
) -> None:
    twin = tmp_path / "twin.de"
    os.link(texts["src"], twin)
    refused_untouched(
        lambda: nmt("translate", tiny_transformer_run, "-i", texts["src"], "-o", twin), 2,
        [tmp_path], f"-o {twin}: is {texts['src']} (-i) through a link",
    )  # fmt: skip


def test_translate_two_outputs_that_are_one_file_through_a_link(
    tiny_transformer_run: Path, tmp_path: Path, texts: dict[str, Path]
) -> None:
    out = tmp_path / "out.txt"
    out.write_text("mine\n")
    (tmp_path / "same.txt").symlink_to(out)
    refused_untouched(
        lambda: nmt("translate", tiny_transformer_run, "-i", texts["src"], "-o", out,
                    "--alignments-out", tmp_path / "same.txt"), 2, [tmp_path],
        "is also -o",
    )  # fmt: skip


# ---- 2. evaluate --hyp-out: not the reference, the source or the model ---------------------------


@pytest.mark.parametrize("target", ["ref", "src", "model"])
def test_evaluate_hyp_out_onto_an_input(
    tiny_transformer_run: Path, tmp_path: Path, texts: dict[str, Path], target: str
) -> None:
    out = tiny_transformer_run / "best.pt" if target == "model" else texts[target]
    what = {"ref": "a --ref of test set a", "src": "the --src of test set a"}
    needle = what.get(target, f"a file of the run folder {tiny_transformer_run}")
    refused_untouched(
        lambda: nmt("evaluate", tiny_transformer_run, "--src", texts["src"], "--ref",
                    texts["ref"], "--hyp-out", out), 2, [tiny_transformer_run, tmp_path],
        f"--hyp-out {out}: is also {needle}",
    )  # fmt: skip


def test_evaluate_hyp_out_folder_onto_an_input(
    tiny_transformer_run: Path, tmp_path: Path, texts: dict[str, Path]
) -> None:
    """With several test sets --hyp-out is a folder of NAME.hyp files: one may not be an input."""
    kept = tmp_path / "b.hyp"  # the translations of test set b would go here
    kept.write_text("DO CE BA\nGE FO\n")
    refused_untouched(
        lambda: nmt("evaluate", tiny_transformer_run, "--test", f"a={texts['src']},{texts['ref']}",
                    "--test", f"b={texts['src']},{kept}", "--hyp-out", tmp_path), 2,
        [tmp_path], f"--hyp-out {kept}: is also a --ref of test set b",
    )  # fmt: skip


# ---- 3. --report: not the hypotheses, source, reference, gold links or the run's log -------------


@pytest.mark.parametrize("target", ["hyp", "ref"])
def test_evaluate_report_onto_a_scored_file(tmp_path: Path, texts: dict[str, Path], target: str):
    hyp = tmp_path / "h.en"
    hyp.write_text("DO CE BA\nGE FO\n")
    out = hyp if target == "hyp" else texts["ref"]
    refused_untouched(lambda: nmt("evaluate", "--hyp", hyp, "--ref", texts["ref"], "--report",
                                  out), 2, [tmp_path], f"--report {out}: is also")  # fmt: skip


def test_evaluate_report_onto_the_source_or_the_run_log(
    tiny_transformer_run: Path, tmp_path: Path, texts: dict[str, Path]
) -> None:
    for out in (texts["src"], tiny_transformer_run / "metrics.jsonl"):
        refused_untouched(
            lambda out=out: nmt("evaluate", tiny_transformer_run, "--src", texts["src"], "--ref",
                                texts["ref"], "--report", out), 2,
            [tiny_transformer_run, tmp_path], f"--report {out}: is also",
        )  # fmt: skip


@pytest.mark.parametrize("target", ["gold", "hyp", "run log"])
def test_align_eval_report_onto_an_input_or_a_run(
    tiny_transformer_run: Path, tmp_path: Path, texts: dict[str, Path], target: str
) -> None:
    """align-eval does not read the run, but a run folder's files are never an output's place:
    nmt reads them later (resume, plot-metrics)."""
    out = tiny_transformer_run / "metrics.jsonl" if target == "run log" else texts[target]
    refused_untouched(
        lambda: nmt("align-eval", "--gold", texts["gold"], "--hyp", texts["hyp"], "--report", out),
        2, [tiny_transformer_run, tmp_path], f"--report {out}: is also",
    )  # fmt: skip


# ---- the other writing commands: average, plot, plot-metrics, prepare, train ---------------------


def test_average_out_onto_a_checkpoint_through_a_link(
    tiny_transformer_run: Path, tmp_path: Path
) -> None:
    (tmp_path / "alias").symlink_to(tiny_transformer_run, target_is_directory=True)
    out = tmp_path / "alias" / "checkpoint_120.pt"
    refused_untouched(lambda: nmt("average", tiny_transformer_run, "--last", 1, "--out", out), 2,
                      [tiny_transformer_run, tmp_path], f"--out {out}: is")  # fmt: skip


@pytest.mark.parametrize("command", ["plot", "plot-metrics"])
def test_picture_onto_its_input_through_a_link(
    tiny_transformer_run: Path, tmp_path: Path, command: str
) -> None:
    picture = tmp_path / "picture.png"
    if command == "plot":
        source = tmp_path / "attn.jsonl"
        source.write_text("{}\n")
        picture.symlink_to(source)
        args = ["plot", source, "--out", picture]
    else:
        picture.symlink_to(tiny_transformer_run / "metrics.jsonl")
        args = ["plot-metrics", tiny_transformer_run, "--out", picture]
    refused_untouched(lambda: nmt(*args), 2, [tiny_transformer_run, tmp_path],
                      f"--out {picture}: is")  # fmt: skip


def test_prepare_out_holding_its_config(tmp_path: Path, texts: dict[str, Path]) -> None:
    out = tmp_path / "prepared"
    out.mkdir()
    config = out / "prepare.yaml"
    config.write_text("vocab_size: 40\n")
    refused_untouched(
        lambda: nmt("prepare", "--src-lang", "de", "--tgt-lang", "en", "--train",
                    tmp_path / "a", "--valid", tmp_path / "a", "--config", config,
                    "--out", out, "--overwrite"), 1, [tmp_path],
        f"--out {out}: holds {config} (the --config file)",
    )  # fmt: skip


# ---- 17. train --out: never a prepared folder, and no advice to delete one ----------------------


@pytest.mark.parametrize("where", ["the data itself", "inside the data", "another prepared"])
def test_train_out_in_a_prepared_folder(tiny_prepared: Path, tmp_path: Path, where: str) -> None:
    config = tiny_run_yaml(tmp_path / "run.yaml")
    if where == "another prepared":
        other = tmp_path / "other"
        other.mkdir()
        for path in tiny_prepared.iterdir():  # the top-level files are enough to look the part
            if path.is_file():
                (other / path.name).write_bytes(path.read_bytes())
        out, needle = other, f"{other}: already exists (it is not empty)"
    else:
        out = tiny_prepared if where == "the data itself" else tiny_prepared / "run"
        verb = "is" if out == tiny_prepared else "lies inside"
        needle = f"--out {out}: {verb} {tiny_prepared} (the prepared data folder --data)"
    line = refused_untouched(lambda: nmt("train", config, "--data", tiny_prepared, "--out", out),
                             2, [tiny_prepared, tmp_path], needle)  # fmt: skip
    assert "remove" not in line


def test_no_advice_to_remove_a_folder_that_is_not_ours(tiny_prepared: Path) -> None:
    line = refused_untouched(lambda: nmt("corpus", "bible", "--out", tiny_prepared), 2,
                             [tiny_prepared], f"{tiny_prepared}: exists and holds no")  # fmt: skip
    assert "remove" not in line


# ---- a run's files that do not exist yet, and the records of nmt's own output folders ------------


@pytest.mark.parametrize("how", ["named", "through a dangling link"])
def test_a_periodic_checkpoint_name_is_kept_free(
    tiny_transformer_run: Path, tmp_path: Path, texts: dict[str, Path], how: str
) -> None:
    """checkpoint_<N>.pt for any N, present or not: `nmt average` and a resume read them."""
    run = tiny_transformer_run
    out = run / "checkpoint_999.pt"
    if how != "named":
        out = tmp_path / "future.txt"
        out.symlink_to(run / "checkpoint_7.pt")
    refused_untouched(lambda: nmt("translate", run, "-i", texts["src"], "-o", out), 2,
                      [run, tmp_path], f"-o {out}: {run}/checkpoint_*.pt are the periodic "
                      f"checkpoints of the run folder {run}, present or not yet")  # fmt: skip
    assert not (run / "checkpoint_999.pt").exists() and not (run / "checkpoint_7.pt").exists()


def test_the_record_of_an_nmt_output_folder_is_kept(tmp_path: Path, texts: dict[str, Path]) -> None:
    """A folder an nmt command built holds its .nmt-output.json: what lets that command replace
    it later. No other command's output may take its place."""
    from nmt.io import OUTPUT_MARKER, atomic_dir

    with atomic_dir(tmp_path / "made", "corpus") as folder:
        (folder / "train.de").write_text("ba\n", encoding="utf-8")
    out = tmp_path / "made" / OUTPUT_MARKER
    refused_untouched(
        lambda: nmt("align-eval", "--gold", texts["gold"], "--hyp", texts["hyp"], "--report", out),
        2, [tmp_path], f"--report {out}: is also the record of the nmt output {tmp_path / 'made'}",
    )  # fmt: skip


# ---- 5. corpus --out: never inside a prepared folder ---------------------------------------------


@pytest.mark.parametrize("how", ["inside", "through a linked folder"])
def test_corpus_out_inside_a_prepared_folder(tiny_prepared: Path, tmp_path: Path, how: str) -> None:
    parent = tiny_prepared
    if how != "inside":
        parent = tmp_path / "alias"
        parent.symlink_to(tiny_prepared, target_is_directory=True)
    refused_untouched(lambda: nmt("corpus", "bible", "--out", parent / "raw"), 2,
                      [tiny_prepared, tmp_path], f"--out {parent / 'raw'}: lies inside",
                      "(a prepared data folder); write the output elsewhere")  # fmt: skip
    assert not (tiny_prepared / "raw").exists()


# ---- 11. evaluate: a test name never leads --hyp-out out of its folder ---------------------------


@pytest.mark.parametrize("name", ["an absolute path", "../up", ".hidden", "a/b"])
def test_evaluate_test_names_stay_inside_hyp_out(
    tiny_transformer_run: Path, tmp_path: Path, texts: dict[str, Path], name: str
) -> None:
    name = str(tmp_path / "abs") if name == "an absolute path" else name
    pair = f"{texts['src']},{texts['ref']}"
    refused_untouched(
        lambda: nmt("evaluate", tiny_transformer_run, "--test", f"{name}={pair}", "--test",
                    f"b={pair}", "--hyp-out", tmp_path / "hyps"), 2, [tmp_path],
        f"--test '{name}={pair}': a test name is letters, digits, _ . -",
    )  # fmt: skip
    assert not (tmp_path / "hyps").exists()
