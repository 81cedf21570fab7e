"""Decoding speed of an older version of the code against this one, interleaved: by default the
version before beam search kept the source side once per sentence (bench/NOTES.md, lever 17).

    python -m bench.cache_ab --checkpoint checkpoints/m30k-de-en-2k/best.pt [--rounds 3]
    python -m bench.cache_ab --checkpoint CKPT --old 5c6af11 --sentences 200   # a quick check

The old version is `git archive REV nmt` unpacked under /tmp; the new one is this working tree.
Every round decodes the test sentences in one child process per version, old and new taking
turns, so that both meet the same spells of a shared machine: greedy, beam 5, and beam 5 with
the attention (what JSONL output and the server compute), 1,024-token batches as in bench-peers,
float32, the best of `--repeats` searches each. Each child also hashes its outputs, and float32
outputs must not differ between the versions. Results: bench/results/cache-ab-TIMESTAMP.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
from pathlib import Path
from typing import Any

from bench.common import (
    OFFLINE,
    ROOT,
    machine,
    machine_line,
    median,
    print_table,
    write_results,
)

MULTI30K_TEST = ROOT.parent / "shared" / "data" / "multi30k" / "test_2016_flickr.de.gz"
SEARCHES = {"greedy": (1, False), "beam 5": (5, False), "beam 5 + attention": (5, True)}
# The commit that introduced the shared source side names this function; the old version is the
# commit before it.
MARKER = "attend_per_slot"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", type=Path, required=True, help="a float32 .pt or run")
    parser.add_argument("--old", default=None, help="git revision of the old version")
    parser.add_argument("--src", type=Path, default=MULTI30K_TEST, help="source sentences")
    parser.add_argument("--sentences", type=int, default=0, help="first N only (0: all)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2, help="searches per child; best counts")
    parser.add_argument("--batch-tokens", type=int, default=1024)
    parser.add_argument("--child", type=Path, default=None, help=argparse.SUPPRESS)
    return parser.parse_args()


def old_revision() -> str:
    """The commit before the one that introduced MARKER into nmt/models/attention.py."""
    found = subprocess.run(
        ["git", "log", "-S", MARKER, "--format=%H", "--reverse", "--", "nmt/models/attention.py"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    if not found:
        sys.exit(f"no commit introduces {MARKER}; pass --old REV")
    return f"{found[0]}^"


def unpack(revision: str, into: Path) -> Path:
    """`git archive REVISION nmt` unpacked into `into` (a plain copy: the repository's worktrees
    and index stay as they are)."""
    archive = into / "old.tar"
    with open(archive, "wb") as sink:
        subprocess.run(["git", "archive", revision, "nmt"], cwd=ROOT, stdout=sink, check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(into / "tree", filter="data")
    return into / "tree"


def run_child(tree: Path, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """One version's searches in a fresh interpreter whose `nmt` is the one in `tree`: `-S`
    leaves out site-packages' path hooks (the editable install of this tree), which are then put
    back, after `tree`, as plain paths."""
    paths = [
        str(tree),
        str(ROOT),
        sysconfig.get_paths()["purelib"],
        sysconfig.get_paths()["platlib"],
    ]
    argv = [sys.executable, "-S", "-m", "bench.cache_ab", "--child", str(out)]
    argv += ["--checkpoint", str(args.checkpoint), "--src", str(args.src)]
    argv += ["--sentences", str(args.sentences), "--repeats", str(args.repeats)]
    argv += ["--batch-tokens", str(args.batch_tokens)]
    env = {**os.environ, **OFFLINE, "PYTHONPATH": ":".join(dict.fromkeys(paths))}
    # Not from ROOT: `-m` puts the working folder first on the path, before `tree`.
    done = subprocess.run(argv, cwd=out.parent, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"decoding with {tree} failed:\n{(done.stdout + done.stderr)[-3000:]}")
    return json.loads(out.read_text())


def child(args: argparse.Namespace) -> None:
    """The searches of one version (run with that version's `nmt` first on the path)."""
    import hashlib
    import time

    import nmt
    from nmt.inference import Translator
    from nmt.metrics import read_lines

    lines = read_lines(args.src)
    lines = lines[: args.sentences] if args.sentences else lines
    record: dict[str, Any] = {"nmt": str(Path(nmt.__file__).parent)}
    for name, (beam, attention) in SEARCHES.items():
        t = Translator.load(args.checkpoint, "cpu", beam_size=beam, batch_tokens=args.batch_tokens)
        src_ids = t.encode(lines, 0, "benchmark input")
        t.decode(src_ids[:64], attention=attention)  # warm-up
        seconds, outputs = [], []
        for _ in range(args.repeats):
            start = time.perf_counter()
            hyps = t.decode(src_ids, attention=attention)
            seconds.append(time.perf_counter() - start)
            outputs = [t.tgt_tok.decode(n[0].tokens) for n in hyps]
        text = "\n".join(outputs)
        if attention:  # the attention rows and scores are outputs too
            text += repr(
                [(n[0].score, n[0].attention.tolist()) for n in hyps if n[0].attention is not None]
            )
        record[name] = {
            "seconds": min(seconds),
            "sha256": hashlib.sha256(text.encode()).hexdigest()[:16],
        }
    args.child.write_text(json.dumps(record))


def main() -> None:
    args = parse_args()
    if args.child is not None:
        child(args)
        return
    if not args.checkpoint.exists():
        sys.exit(f"{args.checkpoint}: no such checkpoint")
    args.checkpoint, args.src = (
        args.checkpoint.resolve(),
        args.src.resolve(),
    )  # children run elsewhere
    revision = args.old or old_revision()
    with tempfile.TemporaryDirectory(prefix="nmt-cache-ab-") as tmp:
        old_tree = unpack(revision, Path(tmp))
        runs: dict[str, list[dict[str, Any]]] = {"old": [], "new": []}
        for round_ in range(args.rounds):
            for version, tree in (("old", old_tree), ("new", ROOT)):
                print(f"round {round_ + 1}: {version}", flush=True)
                runs[version].append(run_child(tree, args, Path(tmp) / f"{version}.json"))
    rows = []
    for name in SEARCHES:
        old = [r[name]["seconds"] for r in runs["old"]]
        new = [r[name]["seconds"] for r in runs["new"]]
        hashes = {r[name]["sha256"] for r in runs["old"] + runs["new"]}
        rows.append({"search": name, "old_s": median(old), "new_s": median(new),
                     "old_over_new": median(old) / median(new), "old_each": old, "new_each": new,
                     "outputs_identical": "yes" if len(hashes) == 1 else "NO",
                     "sha256": sorted(hashes)})  # fmt: skip
    trees = {version: runs[version][0]["nmt"] for version in runs}
    if trees["old"] == trees["new"]:
        sys.exit(f"both versions imported {trees['new']}: the A/B compared nothing")
    payload = {"machine": machine(), "old": revision, "trees": trees, "rows": rows,
               "settings": vars(args) | {"child": None}}  # fmt: skip
    path = write_results("cache-ab", payload)
    print(machine_line(payload["machine"]))
    print(f"old = {revision}, new = this tree; medians of {args.rounds} alternated rounds")
    print_table(rows, ["search", "old_s", "new_s", "old_over_new", "outputs_identical"])
    print(f"written: {path.relative_to(ROOT)}")
    if any(r["outputs_identical"] != "yes" for r in rows):
        sys.exit("the versions' float32 outputs differ")


if __name__ == "__main__":
    main()
