"""`nmt serve` over real HTTP on a loopback port: every endpoint, every kind of bad request, the
limits, two models, dynamic batching, a fault of ours, and the graceful stop."""

from __future__ import annotations

import re
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import MAX_CHARS, MAX_SENTENCES
from serve_support import Reply, Server, call, serve_in_thread

from nmt.inference import TranslateOptions, Translator

SENTENCES = ["ba ce do", "", "fo ge", "ha ke lo ba ce do fe", "ce"]


@pytest.fixture(scope="module")
def local(served_runs: list[Path]) -> Iterator[dict[str, Translator]]:
    """The same runs loaded in the test process, to compare the server's answers with."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield {path.name: Translator.load(path, device="cpu") for path in served_runs}
    torch.set_num_threads(threads)


def translate(server: Server, **body: Any) -> Reply:
    return call(server.url + "/translate", body)


def is_json_error(reply: Reply, status: int, *needles: str) -> None:
    """The reply is `status` with a JSON {"error": "..."} naming what was wrong; no traceback."""
    assert reply.status == status, reply.body
    assert reply.headers["content-type"].startswith("application/json")
    assert set(reply.data) == {"error"} and isinstance(reply.data["error"], str)
    for needle in needles:
        assert needle in reply.data["error"], reply.data["error"]
    assert b"Traceback" not in reply.body and b'File "' not in reply.body


def metric(text: str, name: str) -> float:
    """The value of one sample line of /metrics (0 when absent)."""
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


# ---- /translate -------------------------------------------------------------------------------


def test_translate_answers_like_the_python_api(server: Server, local: dict) -> None:
    reply = translate(server, text=SENTENCES)
    assert reply.status == 200 and reply.headers["content-type"].startswith("application/json")
    data = reply.data
    assert data["model"] == "tiny-transformer" and data["time_ms"] > 0
    expected = local["tiny-transformer"].translate_full(SENTENCES, TranslateOptions(attention=True))
    assert len(data["translations"]) == len(SENTENCES)
    for got, want in zip(data["translations"], expected, strict=True):
        want = want.to_dict()
        assert set(got) == {"translation", "score", "tokens", "token_scores", "alignment",
                            "sentences"}  # fmt: skip
        assert got["translation"] == want["translation"] and got["tokens"] == want["tokens"]
        assert got["alignment"] == want["alignment"]
        assert got["score"] == pytest.approx(want["score"], abs=1e-4)
        assert got["token_scores"] == pytest.approx(want["token_scores"], abs=1e-4)
    assert data["translations"][1]["translation"] == ""  # the empty line stays empty


def test_a_single_string_gives_one_translation(server: Server) -> None:
    data = translate(server, text="fo ge").data
    assert len(data["translations"]) == 1
    assert data["translations"][0]["tokens"][-1] == "</s>"


def test_second_model_by_name(server: Server, local: dict) -> None:
    data = translate(server, text=["fo ge", "ba ce do"], model="tiny-rnn", beam=2).data
    assert data["model"] == "tiny-rnn"
    want = local["tiny-rnn"].translate_full(["fo ge", "ba ce do"], TranslateOptions(beam_size=2))
    assert [t["translation"] for t in data["translations"]] == [w.translation for w in want]


def test_nbest_and_attention(server: Server) -> None:
    data = translate(server, text=["ha ke lo ba"], beam=4, nbest=3, attention=True).data
    row = data["translations"][0]
    assert len(row["nbest"]) == 3 and row["nbest"][0]["translation"] == row["translation"]
    scores = [c["score"] for c in row["nbest"]]
    assert scores == sorted(scores, reverse=True)
    att = row["attention"]
    matrix = np.array(att["matrix"])
    assert att["src_words"] == ["ha", "ke", "lo", "ba"]
    assert matrix.shape == (len(att["tgt_words"]), 4)
    assert ((matrix >= 0) & (matrix <= 1.0001)).all()
    for pair in row["alignment"].split():
        src, tgt = map(int, pair.split("-"))
        assert 0 <= src < 4 and 0 <= tgt < len(att["tgt_words"])


def test_attention_detail_holds_every_layer_and_head(server: Server) -> None:
    """The tiny Transformer has 2 decoder layers of 2 heads; the plain matrix is the last layer's
    head mean (decode.attention_layer=-1, attention_head=mean)."""
    plain = translate(server, text="ha ke lo ba", attention=True).data["translations"][0]
    detail = translate(server, text="ha ke lo ba", attention_detail=True).data["translations"][0]
    layers = np.array(detail["attention"]["layers"])
    tgt, src = len(detail["attention"]["tgt_words"]), len(detail["attention"]["src_words"])
    assert layers.shape == (2, 2, tgt, src)
    np.testing.assert_allclose(layers[-1].mean(axis=0), detail["attention"]["matrix"], atol=2e-4)
    assert detail["attention"]["matrix"] == plain["attention"]["matrix"]
    assert detail["alignment"] == plain["alignment"]


def test_a_paragraph_is_translated_sentence_by_sentence(server: Server, local: dict) -> None:
    paragraph = "ba ce do.  Fo ge ha! Ke lo ba"
    row = translate(server, text=paragraph, attention_detail=True).data["translations"][0]
    sentences = row["sentences"]
    assert [paragraph[s["src_start"] : s["src_end"]] for s in sentences] == [
        "ba ce do.", "Fo ge ha!", "Ke lo ba"]  # fmt: skip
    for sentence in sentences:
        assert (
            row["translation"][sentence["tgt_start"] : sentence["tgt_end"]]
            == (sentence["translation"])
        )
        att = sentence["attention"]
        layers = np.array(att["layers"])
        assert layers.shape == (2, 2, len(att["tgt_words"]), len(att["src_words"]))
        assert att["layer"] == "-1" and att["head"] == "mean"
    # The translation joins the sentences' with the paragraph's own spacing.
    texts = [s["translation"] for s in sentences]
    assert row["translation"] == f"{texts[0]}  {texts[1]} {texts[2]}"
    want = local["tiny-transformer"].translate_full([paragraph])[0]
    assert row["translation"] == want.translation
    whole = translate(server, text=paragraph, split=False).data["translations"][0]
    assert len(whole["sentences"]) == 1
    want = local["tiny-transformer"].translate_full([paragraph], TranslateOptions(split=False))[0]
    assert whole["translation"] == want.translation


def test_html_and_markdown_documents(server: Server) -> None:
    page = '<p>ba <b class="x">ce</b> do</p>\n<pre>ba ce</pre>\n<p>Fo <a href="u">ge</a></p>'
    data = translate(server, text=page, format="html").data
    assert data["format"] == "html" and data["blocks"] == 2 and len(data["translations"]) == 2
    assert data["skipped"] == 0
    document = data["document"]
    assert document.count('<b class="x">') == 1 and document.count('<a href="u">') == 1
    assert "<pre>ba ce</pre>" in document and "attention" not in data["translations"][0]
    data = translate(server, text="# ba *ce*\n\n- do `fe`\n", format="markdown").data
    assert data["document"].startswith("# ") and "`fe`" in data["document"]
    assert data["blocks"] == 2


def test_rnn_attention_has_no_layers(server: Server) -> None:
    row = translate(server, text="fo ge", model="tiny-rnn", attention_detail=True).data
    att = row["translations"][0]["attention"]
    assert "layers" not in att and len(att["matrix"]) == len(att["tgt_words"])


def test_concurrent_requests_share_decoding_calls(server: Server, local: dict) -> None:
    lines = ["ba ce do", "fo ge", "ha ke lo", "ce", "do fe ga", "ke ke", "lo ba", "ga ha ke"] * 2
    before = call(server.url + "/metrics").body.decode()
    replies: list[Reply | None] = [None] * len(lines)
    start = threading.Barrier(len(lines))

    def client(n: int) -> None:
        start.wait()
        replies[n] = translate(server, text=lines[n])

    threads = [threading.Thread(target=client, args=(n,)) for n in range(len(lines))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    want = local["tiny-transformer"].translate(lines)
    assert [r.data["translations"][0]["translation"] for r in replies] == want
    after = call(server.url + "/metrics").body.decode()
    name = 'nmt_batches_total{model="tiny-transformer"}'
    batches = metric(after, name) - metric(before, name)
    assert 1 <= batches < len(lines)


# ---- the other endpoints ----------------------------------------------------------------------


def test_health(server: Server) -> None:
    reply = call(server.url + "/health")
    assert reply.status == 200
    assert reply.data == {
        "status": "ok",
        "models": ["tiny-transformer", "tiny-rnn"],
        "decoder": "running",
    }


def test_models(server: Server, local: dict) -> None:
    models = call(server.url + "/models").data["models"]
    assert [m["name"] for m in models] == ["tiny-transformer", "tiny-rnn"]
    assert [m["arch"] for m in models] == ["transformer", "rnn"]
    assert [m["default"] for m in models] == [True, False]
    for m in models:
        assert (m["src_lang"], m["tgt_lang"]) == ("de", "en")
        assert m["parameters"] == local[m["name"]].info()["parameters"] > 0


def test_metrics_in_prometheus_text_format(server: Server) -> None:
    translate(server, text=["fo ge", "ce"])
    call(server.url + "/translate", b"{")
    reply = call(server.url + "/metrics")
    assert reply.status == 200 and reply.headers["content-type"].startswith("text/plain")
    assert "version=0.0.4" in reply.headers["content-type"]
    text = reply.body.decode()
    sample = re.compile(r'^[a-z_]+(\{[a-z]+="[^"]*"(,[a-z]+="[^"]*")*\})? -?[0-9.e+]+$')
    for line in text.splitlines():
        assert line.startswith("# HELP ") or line.startswith("# TYPE ") or sample.match(line), line
    assert metric(text, 'nmt_requests_total{path="/translate",code="200"}') >= 1
    assert metric(text, 'nmt_requests_total{path="/translate",code="400"}') >= 1
    assert metric(text, 'nmt_sentences_total{model="tiny-transformer"}') >= 2
    assert metric(text, "nmt_queue_sentences") == 0
    count = metric(text, "nmt_request_seconds_count")
    assert count >= 1 and metric(text, 'nmt_request_seconds_bucket{le="+Inf"}') == count
    assert metric(text, 'nmt_batch_sentences_bucket{le="+Inf"}') >= 1


def test_page_and_its_assets_come_from_the_server(server: Server) -> None:
    page = call(server.url + "/")
    assert page.status == 200 and page.headers["content-type"].startswith("text/html")
    html = page.body.decode()
    assets = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert "/static/app.js" in assets and "/static/style.css" in assets
    for asset in assets:
        assert not asset.startswith(("http:", "https:", "//"))  # no CDN
        if asset.startswith("/"):
            assert call(server.url + asset).status == 200


# ---- client mistakes: 4xx with a JSON error ---------------------------------------------------

BAD_BODIES = [
    (b"{", 400, "malformed JSON"),
    (b"\xff\xfe", 400, "not UTF-8"),
    (b'["ba"]', 400, "JSON object"),
    (b'{"model": "tiny-rnn"}', 422, "missing field 'text'"),
    (b'{"text": 3}', 422, "'text' must be a string or a list"),
    (b'{"text": ["ba", 3]}', 422, "'text'[1] must be a string"),
    (b'{"text": []}', 422, "empty list"),
    (b'{"text": "ba\\nce"}', 422, "line break"),
    (b'{"text": "ba\\ud800"}', 422, "'text'[0] is not valid Unicode"),
    (b"[" * 5000, 400, "nested too deeply"),
    (b'{"text": "ba", "beams": 3}', 422, "unknown field 'beams'; did you mean 'beam'?"),
    (b'{"text": "ba", "model": "nope"}', 422, "unknown model 'nope'", "tiny-rnn"),
    (b'{"text": "ba", "model": 1}', 422, "'model' must be a string"),
    (b'{"text": "ba", "beam": 0}', 422, "'beam' is 0; expected 1 to 16"),
    (b'{"text": "ba", "beam": 17}', 422, "'beam' is 17"),
    (b'{"text": "ba", "beam": "5"}', 422, "'beam' must be an integer"),
    (b'{"text": "ba", "beam": true}', 422, "'beam' must be an integer"),
    (b'{"text": "ba", "beam": 2.5}', 422, "'beam' must be an integer"),
    (b'{"text": "ba", "beam": 2, "nbest": 3}', 422, "'nbest' is 3; expected 1 to 2"),
    (b'{"text": "ba", "nbest": 0}', 422, "'nbest' is 0"),
    (b'{"text": "ba", "attention": "yes"}', 422, "'attention' must be true or false"),
    (b'{"text": "ba", "glossary": [["ba", "KE"]]}', 422, "'glossary' must be an object"),
    (b'{"text": "ba", "glossary": {"ba": 3}}', 422, "'glossary'['ba'] must be a string"),
    (b'{"text": "ba", "glossary": {"ba": " "}}', 422, "'glossary' holds an empty term"),
    (
        b'{"text": "ba", "glossary": {"ba": "\\u03a9"}}',
        422,
        "glossary: target term",
        "holds characters",
    ),
    (
        b'{"text": "ba", "glossary": {"ba": "' + b" ".join([b"KE"] * 40) + b'"}}',
        422,
        "subwords long; a glossary term may have at most 32",
    ),
    (b'{"text": "ba", "split": 1}', 422, "'split' must be true or false"),
    (b'{"text": "ba", "format": "pdf"}', 422, "'format' is 'pdf'; expected one of text"),
    (b'{"text": ["ba"], "format": "html"}', 422, "takes the document as one string"),
]


@pytest.mark.parametrize("case", BAD_BODIES, ids=lambda case: case[0][:40].decode("latin-1"))
def test_bad_request_gets_a_json_error(server: Server, case: tuple) -> None:
    body, status, *needles = case
    is_json_error(call(server.url + "/translate", body), status, *needles)


def test_a_request_glossary_steers_the_translation(server: Server, local: dict) -> None:
    from nmt.data.glossary import Glossary

    lines = ["ba ce do", "lo", "ce"]
    reply = translate(server, text=lines, glossary={"ce": "KE"})
    assert reply.status == 200, reply.body
    glossary = Glossary.from_pairs([("ce", "KE")], "test")
    expected = local["tiny-transformer"].translate_full(lines, glossary=glossary)
    for got, want in zip(reply.data["translations"], expected, strict=True):
        assert got["translation"] == want.translation and got["terms"] == want.to_dict()["terms"]
    assert [len(row["terms"]) for row in reply.data["translations"]] == [1, 0, 1]
    assert "KE" in reply.data["translations"][0]["translation"].split()
    assert "terms" not in translate(server, text=lines).data["translations"][0]


def test_sentence_and_character_limits(server: Server) -> None:
    assert translate(server, text=["ce"] * MAX_SENTENCES).status == 200
    reply = translate(server, text=["ce"] * (MAX_SENTENCES + 1))
    is_json_error(reply, 413, f"{MAX_SENTENCES + 1} sentences", f"limit is {MAX_SENTENCES}")
    reply = translate(server, text=["ba " * (MAX_CHARS // 5)] * 2)
    is_json_error(reply, 413, "characters", f"limit is {MAX_CHARS}")
    huge = b'{"text": "' + b"a" * (9 * MAX_CHARS + 70000) + b'"}'
    is_json_error(call(server.url + "/translate", huge), 413, "request body")


def test_wrong_method_and_unknown_path(server: Server) -> None:
    is_json_error(call(server.url + "/translate"), 405, "GET /translate")
    is_json_error(call(server.url + "/nope"), 404, "/nope")
    is_json_error(call(server.url + "/models", b"{}", method="POST"), 405)


# ---- a fault of ours, and stopping ------------------------------------------------------------


@pytest.fixture
def faulty_server(served_runs: list[Path], monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The app in this process (uvicorn in a thread) with decoding made to fail."""
    from nmt.config import ServeConfig
    from nmt.inference import Translator
    from nmt.serve.app import create_app, load_translators

    def broken(*args: Any) -> Iterator[tuple[int, Any]]:
        raise RuntimeError("secret internal detail")

    monkeypatch.setattr(Translator, "stream_planned", broken)
    with serve_in_thread(
        create_app(load_translators(served_runs[:1], "cpu"), ServeConfig())
    ) as url:
        yield url


def test_a_fault_of_ours_is_a_500_without_traceback(faulty_server: str) -> None:
    reply = call(faulty_server + "/translate", {"text": "ba ce"})
    is_json_error(reply, 500, "internal server error")
    assert b"secret" not in reply.body and b"RuntimeError" not in reply.body
    assert call(faulty_server + "/health").status == 200  # the server lives on


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_finishes_requests_in_flight_and_refuses_new_ones(
    served_runs: list[Path], signum: int
) -> None:
    # A 3 s batching wait keeps the first request in flight while the signal arrives.
    running = Server(served_runs[:1], ["--max-wait-ms", "3000"]).start()
    try:
        replies: list[Reply] = []
        first = threading.Thread(target=lambda: replies.append(translate(running, text="fo ge")))
        first.start()
        deadline = time.monotonic() + 10
        while "nmt_queue_sentences 1" not in call(running.url + "/metrics").body.decode():
            assert time.monotonic() < deadline, "the first request never arrived"
            time.sleep(0.02)
        running.process.send_signal(signum)
        running.wait_for("draining")
        is_json_error(translate(running, text="ce"), 503, "shutting down")
        first.join(30)
        assert replies and replies[0].status == 200
        assert replies[0].data["translations"][0]["tokens"][-1] == "</s>"
        assert running.process.wait(30) == 0
        assert not any("Traceback" in line for line in running.log), running.log
    finally:
        running.kill()


# ---- the command's own mistakes ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "code", "needle"),
    [
        (["{missing}"], 1, "missing"),
        (["{run}", "{run}"], 2, "would both be served as 'tiny-transformer'"),
        (["{run}", "--port", "70000"], 2, "expected 0-65535"),
        (["{run}", "--max-sentences", "0"], 2, "--max-sentences 0: expected 1 to 100000"),
    ],
    ids=["missing run", "same name twice", "bad port", "bad limit"],
)
def test_serve_command_mistakes_are_one_line_errors(
    served_runs: list[Path], tmp_path: Path, args: list[str], code: int, needle: str
) -> None:
    from typer.testing import CliRunner

    from nmt.cli import app

    names = {"run": str(served_runs[0]), "missing": str(tmp_path / "missing")}
    result = CliRunner().invoke(app, ["serve", *(a.format(**names) for a in args)])
    assert result.exit_code == code, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and needle in errors[0], result.stderr
    assert "Traceback" not in result.stderr
