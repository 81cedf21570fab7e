// The nmt page: send text to POST /translate and draw each sentence's attention as a heatmap
// (target words down, source words across) plus the hard alignment links between the words.
// Each line of the text box may hold a paragraph: the server splits it into sentences, and every
// sentence gets its own view.
"use strict";

const $ = (selector, root = document) => root.querySelector(selector);
let models = [];

// A server started with an API key wants it on every call: the page takes it from its address,
// http://HOST:PORT/#key=KEY (what follows # never leaves the browser).
const apiKey = new URLSearchParams(location.hash.slice(1)).get("key");
const withKey = (headers = {}) => (apiKey ? { ...headers, authorization: `Bearer ${apiKey}` } : headers);

function setStatus(text) { $("#status").textContent = text; }

function showError(text) {
  const box = $("#error");
  box.textContent = text || "";
  box.hidden = !text;
}

async function loadModels() {
  const response = await fetch("/models", { headers: withKey() });
  const data = await response.json();
  if (!response.ok) { showError(data.error || `HTTP ${response.status}`); return; }
  models = data.models;
  const select = $("#model");
  for (const m of models) {
    const option = document.createElement("option");
    option.value = m.name;
    option.textContent = `${m.name} (${m.src_lang}\u2192${m.tgt_lang}, ${m.arch})`;
    select.append(option);
  }
  select.addEventListener("change", () => { $("#beam").value = currentModel().beam; });
  $("#beam").value = currentModel().beam;
  setStatus(`${models.length} model${models.length === 1 ? "" : "s"} ready`);
}

function currentModel() { return models.find((m) => m.name === $("#model").value) || models[0]; }

async function translate(event) {
  event.preventDefault();
  showError("");
  const lines = $("#text").value.split(/\r?\n/).map((s) => s.trim()).filter((s) => s);
  if (!lines.length) { clearResults(); showError("Type a sentence first."); return; }
  const model = currentModel();
  const body = {
    text: lines,
    model: model.name,
    beam: Number($("#beam").value) || model.beam,
    split: true,
    attention: true,
    attention_detail: model.arch === "transformer",
  };
  $("#go").disabled = true;
  setStatus("translating\u2026");
  try {
    const response = await fetch("/translate", {
      method: "POST",
      headers: withKey({ "content-type": "application/json" }),
      body: JSON.stringify(body),
    });
    const data = await response.json();
    if (!response.ok) {
      clearResults();
      showError(data.error || `HTTP ${response.status}`);
      setStatus("");
      return;
    }
    $("#results").replaceChildren(...data.translations.map(renderResult));
    const sentences = data.translations.reduce((n, t) => n + (t.sentences || []).length, 0);
    setStatus(`${plural(lines.length, "line")}, ${plural(sentences, "sentence")} in ` +
      `${data.time_ms} ms`);
  } catch (err) {
    clearResults();
    showError(`The server did not answer: ${err}`);
    setStatus("");
  } finally {
    $("#go").disabled = false;
  }
}

function plural(n, word) { return `${n} ${word}${n === 1 ? "" : "s"}`; }

// An error is about the request just sent: the answer to an earlier one must not stand below it.
function clearResults() { $("#results").replaceChildren(); }

// "0-0 1-2" (source-target word indices) -> [[0, 0], [1, 2]]
function parseAlignment(text) {
  return (text || "").split(/\s+/).filter((s) => s).map((pair) => pair.split("-").map(Number));
}

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

// One line's translation, then a view per sentence (a single sentence shows no heading).
function renderResult(result) {
  const node = $("#result-template").content.firstElementChild.cloneNode(true);
  $(".translation", node).textContent = result.translation;
  const sentences = result.sentences && result.sentences.length ? result.sentences : [result];
  $(".meta", node).textContent = `score ${result.score.toFixed(3)} \u00b7 ` +
    `${plural(sentences.length, "sentence")} \u00b7 ${describeLength(result)}`;
  $(".views", node).replaceChildren(...sentences.map((s, k) => renderSentence(s, k, sentences)));
  return node;
}

// Target words as shown in the view, and subword pieces as the model counts them (each
// sentence's end mark </s> included), said apart so that the two numbers are not confused.
function describeLength(row) {
  const words = row.translation.split(/\s+/).filter((w) => w).length;
  return `${plural(words, "word")}, ${plural(row.tokens.length, "subword piece")} (with end marks)`;
}

function renderSentence(sentence, k, all) {
  const view = $("#view-template").content.firstElementChild.cloneNode(true);
  const heading = $(".sentence-head", view);
  if (all.length > 1) {
    heading.textContent = `Sentence ${k + 1}: ${sentence.translation} \u00b7 ` +
      `score ${sentence.score.toFixed(3)} \u00b7 ${describeLength(sentence)}`;
  } else {
    heading.hidden = true;
  }
  const att = sentence.attention;
  if (!att || !att.tgt_words.length || !att.src_words.length) {
    $(".attention", view).hidden = true;
    return view;
  }
  new AttentionView(view, att, parseAlignment(sentence.alignment));
  return view;
}

// One translation's attention: word rows with links, heatmap, selectors, hover and tap.
class AttentionView {
  constructor(node, att, links) {
    this.node = node;
    this.att = att;
    this.serverLinks = links; // the run's own alignment, for the layer and head it names
    this.links = links;
    this.pinned = null; // a tapped (clicked) target word stays lit
    this.current = null; // the target word lit now
    this.matrix = att.matrix;
    this.srcWords = att.src_words.map((w, i) => this.word(w, "src-word", "src", i));
    this.tgtWords = att.tgt_words.map((w, j) => this.word(w, "tgt-word", "tgt", j));
    $(".src-row", node).append(...this.srcWords);
    $(".tgt-row", node).append(...this.tgtWords);
    this.buildHeatmap();
    if (att.layers) this.buildSelectors();
    this.tgtWords.forEach((chip, j) => this.listen(chip, j));
    this.rows.forEach((row, j) => this.listen(row.firstElementChild, j));
    this.paint();
    // Links need the laid-out positions of the words.
    requestAnimationFrame(() => this.drawLinks());
    window.addEventListener("resize", () => this.drawLinks());
  }

  word(text, className, side, index) {
    const chip = element("span", `word ${className}`, text);
    chip.dataset[side] = index;
    if (side === "tgt") chip.tabIndex = 0;
    return chip;
  }

  listen(target, j) {
    target.addEventListener("mouseenter", () => this.focus(j));
    target.addEventListener("mouseleave", () => this.focus(this.pinned));
    target.addEventListener("focus", () => this.focus(j));
    target.addEventListener("click", () => {
      this.pinned = this.pinned === j ? null : j;
      this.focus(this.pinned);
    });
  }

  // The hard links of the matrix shown: the server's for the run's own layer and head,
  // else each target word's most attended source word (what decode.align_threshold=0 does).
  linksFor(isRunChoice) {
    if (isRunChoice) return this.serverLinks;
    return this.matrix.map((row, j) => [row.indexOf(Math.max(...row)), j]);
  }

  markLinks() {
    this.rows.forEach((row) => {
      for (const cell of row.querySelectorAll("td")) cell.classList.remove("link");
    });
    for (const [i, j] of this.links) {
      const cell = this.rows[j] && this.rows[j].children[i + 1];
      if (cell) cell.classList.add("link");
    }
  }

  buildHeatmap() {
    const table = $(".heatmap", this.node);
    const head = element("tr");
    head.append(element("th"));
    for (const w of this.att.src_words) {
      const th = element("th");
      th.append(element("span", "", w));
      head.append(th);
    }
    const thead = element("thead");
    thead.append(head);
    const tbody = element("tbody");
    this.rows = this.att.tgt_words.map((w) => {
      const row = element("tr");
      row.append(element("th", "", w));
      for (let i = 0; i < this.att.src_words.length; i++) row.append(element("td"));
      tbody.append(row);
      return row;
    });
    table.replaceChildren(thead, tbody);
    this.markLinks();
  }

  buildSelectors() {
    const box = $(".selectors", this.node);
    const layers = this.att.layers.length;
    const heads = this.att.layers[0].length;
    const fill = (select, count) => {
      select.append(new Option("mean", "mean"));
      // 0-based, as decode.attention_layer / attention_head count them.
      for (let k = 0; k < count; k++) select.append(new Option(String(k), String(k)));
      select.addEventListener("change", () => this.select());
    };
    fill($(".layer", box), layers);
    fill($(".head", box), heads);
    // Start on the run's own layer and head (decode.attention_layer / attention_head), the
    // ones the server's matrix and alignment come from.
    this.runChoice = [resolveIndex(this.att.layer, layers), resolveIndex(this.att.head, heads)];
    $(".layer", box).value = this.runChoice[0];
    $(".head", box).value = this.runChoice[1];
    box.hidden = false;
  }

  // Average the chosen layer(s) and head(s) of att.layers, shaped [layer][head][tgt][src].
  select() {
    const layer = $(".layer", this.node).value;
    const head = $(".head", this.node).value;
    const layers = layer === "mean" ? this.att.layers : [this.att.layers[Number(layer)]];
    const picked = layers.flatMap((heads) => (head === "mean" ? heads : [heads[Number(head)]]));
    this.matrix = this.att.tgt_words.map((_, j) =>
      this.att.src_words.map((_, i) => picked.reduce((sum, m) => sum + m[j][i], 0) / picked.length));
    const run = this.runChoice || [];
    this.links = this.linksFor(layer === run[0] && head === run[1]);
    this.paint();
    this.markLinks();
    this.drawLinks();
  }

  paint() {
    this.rows.forEach((row, j) => {
      this.matrix[j].forEach((w, i) => {
        const cell = row.children[i + 1];
        cell.style.background = `rgba(37, 99, 235, ${w.toFixed(3)})`;
        cell.dataset.weight = w.toFixed(4);
        cell.title = `${this.att.tgt_words[j]} \u2192 ${this.att.src_words[i]}: ${w.toFixed(3)}`;
      });
    });
  }

  // Light up target word j: its aligned source words, its links, its heatmap row.
  focus(j) {
    this.current = j;
    const aligned = new Set(this.links.filter(([, t]) => t === j).map(([s]) => s));
    const row = j === null ? null : this.matrix[j];
    const top = row ? Math.max(...row) || 1 : 1;
    this.srcWords.forEach((chip, i) => {
      chip.classList.toggle("aligned", aligned.has(i));
      const w = row ? row[i] / top : 0;
      chip.style.background = row ? `rgba(37, 99, 235, ${(0.85 * w).toFixed(3)})` : "";
      chip.style.color = w > 0.55 ? "#fff" : "";
    });
    this.tgtWords.forEach((chip, t) => chip.classList.toggle("active", t === j));
    this.rows.forEach((r, t) => r.classList.toggle("active", t === j));
    $(".links", this.node).querySelectorAll("line").forEach((line) => {
      line.classList.toggle("on", Number(line.dataset.tgt) === j);
    });
  }

  drawLinks() {
    const box = $(".links-box", this.node);
    const svg = $(".links", this.node);
    svg.setAttribute("width", box.scrollWidth);
    svg.setAttribute("height", box.scrollHeight);
    svg.replaceChildren();
    for (const [i, j] of this.links) {
      const src = this.srcWords[i];
      const tgt = this.tgtWords[j];
      if (!src || !tgt) continue;
      const line = document.createElementNS("http://www.w3.org/2000/svg", "line");
      line.setAttribute("x1", src.offsetLeft + src.offsetWidth / 2);
      line.setAttribute("y1", src.offsetTop + src.offsetHeight);
      line.setAttribute("x2", tgt.offsetLeft + tgt.offsetWidth / 2);
      line.setAttribute("y2", tgt.offsetTop);
      line.dataset.tgt = j;
      svg.append(line);
    }
    this.focus(this.current);
  }
}

// "-1" of 4 layers -> "3"; "mean" stays; anything unknown shows the mean.
function resolveIndex(value, count) {
  if (value === undefined || value === "mean" || value === "all") return "mean";
  const k = Number(value);
  return String(k < 0 ? count + k : k);
}

$("#form").addEventListener("submit", translate);
$("#text").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) $("#form").requestSubmit();
});
loadModels().catch((err) => showError(`Could not list the models: ${err}`));
