"""`nmt translate` with bad inputs and outputs: one line naming the file (and line), a non-zero
exit before the model is used, and every file that was there before still there byte for byte."""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from nmt.cli import app


def snapshot(folder: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def refuse(tmp_path: Path, args: list[object], code: int, *needles: str, stdin: str | None = None):
    """Run `nmt translate ARGS`; it must fail with `code` in one `error:` line holding `needles`,
    and leave every file under tmp_path as it was (no new ones either)."""
    before = snapshot(tmp_path)
    result = CliRunner().invoke(app, ["translate", *map(str, args)], input=stdin)
    assert result.exit_code == code, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and result.stderr.strip().splitlines()[-1] == errors[0], result.stderr
    assert "Traceback" not in result.output
    for needle in needles:
        assert needle in errors[0], errors[0]
    assert snapshot(tmp_path) == before
    return errors[0]


@pytest.fixture()
def src(tmp_path: Path) -> Path:
    path = tmp_path / "in.de"
    path.write_text("ba ce do\nfo ge\n", encoding="utf-8")
    return path


def test_output_that_is_a_directory(tiny_transformer_run: Path, tmp_path: Path, src: Path) -> None:
    (tmp_path / "outdir").mkdir()
    refuse(tmp_path, [tiny_transformer_run, "-i", src, "-o", tmp_path / "outdir"], 2,
           "is a directory")  # fmt: skip


def test_output_that_is_the_input(tiny_transformer_run: Path, tmp_path: Path, src: Path) -> None:
    refuse(tmp_path, [tiny_transformer_run, "-i", src, "-o", src], 2, "is also -i")


@pytest.mark.parametrize("flag", ["-o", "--alignments-out", "--attention-out"])
def test_output_under_a_regular_file(
    tiny_transformer_run: Path, tmp_path: Path, src: Path, flag: str
) -> None:
    (tmp_path / "plain").write_text("not a folder\n", encoding="utf-8")
    target = tmp_path / "plain" / "out.jsonl"
    args = [tiny_transformer_run, "-i", src, flag, target]
    if flag != "-o":
        args += ["-o", tmp_path / "hyp.en"]  # must not appear either
    refuse(tmp_path, args, 2, "cannot be written", "Not a directory", flag)


def test_plot_dir_that_is_a_file(tiny_transformer_run: Path, tmp_path: Path, src: Path) -> None:
    (tmp_path / "plots").write_text("x\n", encoding="utf-8")
    refuse(tmp_path, [tiny_transformer_run, "-i", src, "--plot-dir", tmp_path / "plots"], 2,
           "--plot-dir")  # fmt: skip


def test_invalid_utf8_late_in_a_file_is_found_before_translating(
    tiny_transformer_run: Path, tmp_path: Path
) -> None:
    bad = tmp_path / "late.de"
    bad.write_bytes(b"ba ce do\n" * 1499 + b"fo \xff ge\n" + b"ba\n" * 10)
    refuse(tmp_path, [tiny_transformer_run, "-i", bad, "-o", tmp_path / "out.en"], 1,
           f"{bad}:1500:", "not valid UTF-8", "fix the input")  # fmt: skip


def test_invalid_utf8_on_stdin_names_its_line(tiny_transformer_run: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, ["translate", str(tiny_transformer_run)], input=b"ba ce\nfo\n\xfe\xff ge\n"
    )
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines()[-1].startswith("error: <stdin>:3: not valid UTF-8")


def test_truncated_gzip(tiny_transformer_run: Path, tmp_path: Path) -> None:
    whole = gzip.compress(b"ba ce do\n" * 2000)
    cut = tmp_path / "cut.de.gz"
    cut.write_bytes(whole[: len(whole) // 2])
    refuse(tmp_path, [tiny_transformer_run, "-i", cut], 1, str(cut), "cannot read", "ended before")


def test_gz_file_that_is_not_gzip(tiny_transformer_run: Path, tmp_path: Path) -> None:
    fake = tmp_path / "fake.de.gz"
    fake.write_text("ba ce do\n", encoding="utf-8")
    refuse(tmp_path, [tiny_transformer_run, "-i", fake], 1, str(fake), "cannot read", "gzip")


def test_missing_input_file(tiny_transformer_run: Path, tmp_path: Path) -> None:
    refuse(tmp_path, [tiny_transformer_run, "-i", tmp_path / "nope.de"], 1, "not found")


def test_unknown_output_format(tiny_transformer_run: Path, tmp_path: Path, src: Path) -> None:
    refuse(tmp_path, [tiny_transformer_run, "-i", src, "--output-format", "xml"], 2, "xml")


# ---- closed standard streams (real processes) ----------------------------------------------------


def test_closed_stdin(tiny_transformer_run: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "nmt.cli", "translate", str(tiny_transformer_run)],
        capture_output=True,
        preexec_fn=lambda: os.close(0),
        timeout=120,
    )
    stderr = proc.stderr.decode()
    assert proc.returncode == 1, stderr
    assert stderr.strip().splitlines() == [
        "error: <stdin>: standard input is closed; give -i FILE or pipe text in"
    ]


def test_reader_that_goes_away(tiny_transformer_run: Path, tmp_path: Path) -> None:
    """`nmt translate ... | head -1`: the closed pipe ends the command with one line."""
    src = tmp_path / "many.de"
    src.write_text("ba ce do fe\n" * 3000, encoding="utf-8")
    cmd = [sys.executable, "-m", "nmt.cli", "translate", str(tiny_transformer_run), "-i", str(src),
           "--beam", "1"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdout.readline()
    proc.stdout.close()
    _, stderr_bytes = proc.communicate(timeout=120)
    stderr = stderr_bytes.decode()
    assert proc.returncode == 1, stderr
    assert "Traceback" not in stderr
    assert stderr.strip().splitlines()[-1].startswith("error: <stdout>: the reader closed the pipe")


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("-o", "--alignments-out"),
        ("--attention-out", "--alignments-out"),
        ("-o", "--attention-out"),
    ],
)
def test_two_outputs_on_one_path(
    tiny_transformer_run: Path, tmp_path: Path, src: Path, first: str, second: str
) -> None:
    same = tmp_path / "out.jsonl"
    refuse(tmp_path, [tiny_transformer_run, "-i", src, first, same, second, same], 2,
           f"is also {first}")  # fmt: skip


def test_lines_before_invalid_utf8_on_stdin_are_answered(tiny_transformer_run: Path) -> None:
    result = CliRunner().invoke(
        app, ["translate", str(tiny_transformer_run)], input=b"ba ce\nfo\n\xfe\xff ge\n"
    )
    assert result.exit_code == 1
    assert len(result.stdout.splitlines()) == 2  # the two good lines came in the same batch


def test_a_text_file_given_as_the_checkpoint(tmp_path: Path) -> None:
    fake = tmp_path / "model.pt"
    fake.write_text("hello\n", encoding="utf-8")
    refuse(tmp_path, [fake], 1, "not a readable checkpoint (not a file written by torch.save)",
           stdin="ba\n")  # fmt: skip


# ---- an output that is a stream (our stdout or stderr, a descriptor): written through ----------


def test_outputs_onto_our_redirected_stdout_and_stderr_are_written_through(
    tiny_transformer_run: Path, tmp_path: Path, src: Path
) -> None:
    """stdout and stderr redirected to files (stdout appended to): `-o` through a link to
    /proc/self/fd/1 and `--alignments-out /proc/self/fd/2` write into those files; the link is
    not replaced, and no temp file is tried in /proc."""
    out = tmp_path / "mystdout"
    out.symlink_to("/proc/self/fd/1")
    stdout_file, stderr_file = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
    stdout_file.write_text("kept\n", encoding="utf-8")
    cmd = [sys.executable, "-m", "nmt.cli", "translate", str(tiny_transformer_run), "-i", str(src),
           "-o", str(out), "--alignments-out", "/proc/self/fd/2"]  # fmt: skip
    with open(stdout_file, "a") as stdout, open(stderr_file, "w") as stderr:
        done = subprocess.run(cmd, stdout=stdout, stderr=stderr, timeout=180)
    log = stderr_file.read_text(encoding="utf-8").splitlines()
    assert done.returncode == 0, log
    translations = stdout_file.read_text(encoding="utf-8").splitlines()
    assert translations[0] == "kept" and len(translations) == 3 and all(translations[1:])
    assert "translated 2 lines" in log[-1] and len(log) == 4  # loaded, 2 alignment lines, done
    assert os.readlink(out) == "/proc/self/fd/1"
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "in.de", "mystdout", "stderr.txt", "stdout.txt"]  # fmt: skip


def test_an_output_that_is_the_file_on_stdin_is_refused(
    tiny_transformer_run: Path, tmp_path: Path, src: Path
) -> None:
    """`nmt translate RUN -o x < x`: stdin is the input, and the output may not replace it."""
    before = src.read_bytes()
    cmd = [sys.executable, "-m", "nmt.cli", "translate", str(tiny_transformer_run), "-o", str(src)]
    with open(src, "rb") as stdin:
        done = subprocess.run(cmd, stdin=stdin, capture_output=True, text=True, timeout=180)
    assert done.returncode == 2, done.stderr
    assert done.stderr == (f"error: -o {src}: is /dev/stdin (the standard input) through a link; "
                           "write the output to another file\n")  # fmt: skip
    assert src.read_bytes() == before and sorted(tmp_path.iterdir()) == [src]


def test_stdout_opened_onto_the_input_is_refused(
    tiny_transformer_run: Path, tmp_path: Path, src: Path
) -> None:
    """`nmt translate RUN -i x 1<>x`: without -o the translations go to stdout, here the input."""
    before = src.read_bytes()
    cmd = [sys.executable, "-m", "nmt.cli", "translate", str(tiny_transformer_run), "-i", str(src)]
    with open(src, "r+b") as stdout:
        done = subprocess.run(cmd, stdout=stdout, stderr=subprocess.PIPE, text=True, timeout=180)
    assert done.returncode == 2, done.stderr
    assert done.stderr == (f"error: the standard output /dev/stdout: is {src} (-i) through a "
                           "link; write the output to another file\n")  # fmt: skip
    assert src.read_bytes() == before and sorted(tmp_path.iterdir()) == [src]


@pytest.mark.parametrize("command", ["evaluate", "align-eval"])
def test_a_report_through_an_open_descriptor_keeps_the_link(tmp_path: Path, command: str) -> None:
    """--report LINK, LINK -> /proc/self/fd/N of a file this process holds open for appending:
    the report is appended to that file (written through the descriptor), the link stays."""
    for name, text in (("h.en", "BA CE\n"), ("r.en", "BA CE\n"), ("g.align", "0-0 1-1\n")):
        (tmp_path / name).write_text(text, encoding="utf-8")
    target = tmp_path / "reports.log"
    target.write_text("earlier\n", encoding="utf-8")
    fd = os.open(target, os.O_WRONLY | os.O_APPEND)
    try:
        link = tmp_path / "report.json"
        link.symlink_to(f"/proc/self/fd/{fd}")
        args = {
            "evaluate": ["--hyp", tmp_path / "h.en", "--ref", tmp_path / "r.en"],
            "align-eval": ["--gold", tmp_path / "g.align", "--hyp", tmp_path / "g.align"],
        }
        result = CliRunner().invoke(app, [command, *map(str, args[command]), "--report",
                                          str(link)])  # fmt: skip
    finally:
        os.close(fd)
    assert result.exit_code == 0, result.output
    assert os.readlink(link) == f"/proc/self/fd/{fd}"
    text = target.read_text(encoding="utf-8")
    assert text.startswith("earlier\n{") and ('"bleu"' in text or '"aer"' in text), text


def test_an_output_through_a_descriptor_open_for_reading_is_refused_first(
    tiny_transformer_run: Path, tmp_path: Path, src: Path
) -> None:
    fd = os.open(src, os.O_RDONLY)
    try:
        link = tmp_path / "out.txt"
        link.symlink_to(f"/proc/self/fd/{fd}")
        refuse(tmp_path, [tiny_transformer_run, "-i", src, "-o", link], 2,
               f"-o {link}: cannot be written ({link}: open for reading only)")  # fmt: skip
    finally:
        os.close(fd)
