// The nmt page: send text to POST /translate and draw each translation's attention as a heatmap
// (target words down, source words across) plus the hard alignment links between the sentences.
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
  if (!lines.length) { showError("Type a sentence first."); return; }
  const model = currentModel();
  const body = {
    text: lines,
    model: model.name,
    beam: Number($("#beam").value) || model.beam,
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
    if (!response.ok) { showError(data.error || `HTTP ${response.status}`); setStatus(""); return; }
    $("#results").replaceChildren(...data.translations.map(renderResult));
    setStatus(`${lines.length} sentence${lines.length === 1 ? "" : "s"} in ${data.time_ms} ms`);
  } catch (err) {
    showError(`The server did not answer: ${err}`);
    setStatus("");
  } finally {
    $("#go").disabled = false;
  }
}

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

function renderResult(result) {
  const node = $("#result-template").content.firstElementChild.cloneNode(true);
  $(".translation", node).textContent = result.translation;
  $(".meta", node).textContent =
    `score ${result.score.toFixed(3)} \u00b7 ${result.tokens.length} tokens`;
  const att = result.attention;
  if (!att || !att.tgt_words.length || !att.src_words.length) {
    $(".view", node).hidden = true;
    return node;
  }
  new AttentionView(node, att, parseAlignment(result.alignment));
  return node;
}

// One translation's attention: word rows with links, heatmap, selectors, hover and tap.
class AttentionView {
  constructor(node, att, links) {
    this.node = node;
    this.att = att;
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
    for (const [i, j] of this.links) {
      const cell = this.rows[j] && this.rows[j].children[i + 1];
      if (cell) cell.classList.add("link");
    }
    table.replaceChildren(thead, tbody);
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
    box.hidden = false;
    this.select();
  }

  // Average the chosen layer(s) and head(s) of att.layers, shaped [layer][head][tgt][src].
  select() {
    const layer = $(".layer", this.node).value;
    const head = $(".head", this.node).value;
    const layers = layer === "mean" ? this.att.layers : [this.att.layers[Number(layer)]];
    const picked = layers.flatMap((heads) => (head === "mean" ? heads : [heads[Number(head)]]));
    this.matrix = this.att.tgt_words.map((_, j) =>
      this.att.src_words.map((_, i) => picked.reduce((sum, m) => sum + m[j][i], 0) / picked.length));
    this.paint();
    this.focus(this.current);
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

$("#form").addEventListener("submit", translate);
$("#text").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) $("#form").requestSubmit();
});
loadModels().catch((err) => showError(`Could not list the models: ${err}`));
