// The tutorial, live: every tensor the page shows comes from an API call made here.
// Each shown tensor is an element with data-tensor="<section>.<name>" and data-values,
// the JSON the API received or returned, unrounded (contract §6).

import { ApiError, apiKey, post, setApiKey } from "./api.js";
import { t, translate } from "./i18n.js";

const $ = (id) => document.getElementById(id);
const tensorEl = (name) => document.querySelector(`[data-tensor="${name}"]`);

// ------------------------------------------------------------------ showing tensors

/** Numbers as the page prints them (the full value stays in data-values and the title). */
function fmt(v) {
  if (typeof v !== "number") return String(v);
  if (Number.isInteger(v)) return String(v);
  const s = Math.abs(v) >= 1e4 || Math.abs(v) < 1e-3 ? v.toExponential(2) : v.toPrecision(4);
  return String(Number(s));
}

/** The innermost 2-D matrix of a nested list (what the page draws), or a scalar. */
function plane(values) {
  let v = values;
  while (Array.isArray(v) && Array.isArray(v[0]) && Array.isArray(v[0][0])) v = v[0];
  if (Array.isArray(v) && !Array.isArray(v[0])) return [v];
  return v;
}

/** Show ``values`` in the element data-tensor=``name``; ``mark`` highlights cells. */
function show(name, values, mark = () => "") {
  const el = tensorEl(name);
  el.dataset.values = JSON.stringify(values);
  if (!Array.isArray(values)) {
    el.textContent = fmt(values);
    el.title = String(values);
    return;
  }
  const rows = plane(values);
  const table = document.createElement("table");
  table.setAttribute("aria-label", name);
  rows.forEach((row, i) => {
    const tr = table.insertRow();
    row.forEach((v, j) => {
      const td = tr.insertCell();
      td.textContent = fmt(v);
      td.title = String(v);
      td.dataset.i = i;
      td.dataset.j = j;
      const cls = mark(i, j);
      if (cls) td.className = cls;
    });
  });
  el.replaceChildren(table);
}

function status(text, error = false) {
  const el = $("status");
  el.textContent = text;
  el.className = error ? "error" : "";
  el.setAttribute("role", error ? "alert" : "status");
}

function failed(err) {
  if (err instanceof ApiError && err.status === 401) {
    $("key-form").hidden = false;
    status(`${t("key_needed")} (${err.message})`, true);
  } else {
    status(err.message || String(err), true);
  }
}

// ------------------------------------------------------------------ reading inputs

/** A matrix typed as rows of numbers (spaces or commas between them). */
function matrix(id) {
  const rows = $(id)
    .value.trim()
    .split(/\n+/)
    .map((line) => line.trim().split(/[\s,]+/).filter(Boolean).map(Number));
  if (!rows.length || rows.some((r) => r.length !== rows[0].length || r.some(Number.isNaN))) {
    throw new Error(`${id}: rows of numbers, all the same length`);
  }
  return rows;
}

const num = (id) => Number($(id).value);
const nchw = (m) => [[m]]; // one sample, one channel
const rot180 = (m) => m.map((r) => [...r].reverse()).reverse();

/** ``m`` with (s - 1) zeros between its elements (a strided layer's dout). */
function dilate(m, s) {
  const h = (m.length - 1) * s + 1;
  const w = (m[0].length - 1) * s + 1;
  const out = Array.from({ length: h }, () => Array(w).fill(0));
  m.forEach((r, i) => r.forEach((v, j) => (out[i * s][j * s] = v)));
  return out;
}

/** ``m`` inside a border of ``ph`` zero rows and ``pw`` zero columns. */
function pad(m, ph, pw) {
  const w = m[0].length + 2 * pw;
  const zeros = () => Array(w).fill(0);
  return [
    ...Array.from({ length: ph }, zeros),
    ...m.map((r) => [...Array(pw).fill(0), ...r, ...Array(pw).fill(0)]),
    ...Array.from({ length: ph }, zeros),
  ];
}

/** ``m`` cut or zero-extended to ``h`` × ``w`` from its top-left corner. */
function fit(m, h, w) {
  return Array.from({ length: h }, (_, i) =>
    Array.from({ length: w }, (_, j) => (m[i] && m[i][j] !== undefined ? m[i][j] : 0)),
  );
}

function close(a, b) {
  const fa = a.flat(Infinity);
  const fb = b.flat(Infinity);
  return fa.length === fb.length && fa.every((v, i) => Math.abs(v - fb[i]) <= 1e-9 * (1 + Math.abs(v)));
}

// ------------------------------------------------------------------ convolution

let conv = null; // the last inputs and answers, for the receptive field and the check

async function updateConv() {
  const x = matrix("conv-x");
  const w = matrix("conv-w");
  const dout = matrix("conv-dout");
  const b = num("conv-b");
  const stride = num("conv-stride");
  const padding = num("conv-padding");
  const params = { stride, padding };
  show("conv.x", nchw(x));
  show("conv.w", nchw(w));
  show("conv.dout", nchw(dout));
  const fwd = await post("/v1/conv2d/forward", { x: nchw(x), w: nchw(w), b: [b], ...params });
  conv = { x, w, b, stride, padding, out: fwd.out };
  showOut();
  const bwd = await post("/v1/conv2d/backward", {
    x: nchw(x), w: nchw(w), b: [b], dout: nchw(dout), ...params,
  });
  Object.assign(conv, { dout, dx: bwd.dx, dw: bwd.dw, db: bwd.db });
  show("conv.dw", bwd.dw);
  show("conv.dx", bwd.dx);
  show("conv.db", bwd.db);

  // ∂L/∂w = x ⋆ ∂L/∂u: the (padded) input convolved with dout, spread by the stride.
  const kh = w.length;
  const kw = w[0].length;
  const r1 = await post("/v1/conv2d/forward", {
    x: nchw(x), w: nchw(dout), padding, dilation: stride,
  });
  const dwRel = nchw(fit(plane(r1.out), kh, kw));
  show("conv.dw_relation", dwRel);
  verdict("rel1-verdict", close(dwRel, bwd.dw), "dw");

  // ∂L/∂x = (dout spread by the stride, zero-padded by kernel - 1) ⋆ rot180(w), less the
  // layer's own padding; rows and columns the kernel never covered get zero.
  const padded = pad(dilate(dout, stride), kh - 1, kw - 1);
  const rotated = rot180(w);
  show("conv.dout_padded", nchw(padded));
  show("conv.w_rotated", nchw(rotated));
  const r2 = await post("/v1/conv2d/forward", { x: nchw(padded), w: nchw(rotated) });
  const full = plane(r2.out).slice(padding).map((r) => r.slice(padding));
  const dxRel = nchw(fit(full, x.length, x[0].length));
  show("conv.dx_relation", dxRel);
  verdict("rel2-verdict", close(dxRel, bwd.dx), "dx");
}

function verdict(id, ok, what) {
  const el = $(id);
  el.textContent = ok ? `✓ ${t("equal", what)}` : `✗ ${t("differs", what)}`;
  el.className = `verdict ${ok ? "ok" : "bad"}`;
}

let selected = [0, 0];

function showOut() {
  const [si, sj] = selected;
  show("conv.out", conv.out, (i, j) => (i === si && j === sj ? "selected" : ""));
  for (const td of tensorEl("conv.out").querySelectorAll("td")) {
    td.tabIndex = 0;
    td.setAttribute("role", "button");
    const pick = () => {
      selected = [Number(td.dataset.i), Number(td.dataset.j)];
      showOut();
      tensorEl("conv.out").querySelector("td.selected")?.focus();
    };
    td.addEventListener("click", pick);
    td.addEventListener("keydown", (e) => {
      if (e.key === "Enter" || e.key === " ") {
        e.preventDefault();
        pick();
      }
    });
  }
  receptiveField();
}

/** Highlight out[i][j]'s receptive field in x and write its sum out with the numbers. */
function receptiveField() {
  const { x, w, b, stride, padding, out } = conv;
  const o = plane(out);
  const [i, j] = selected;
  if (!o[i] || o[i][j] === undefined) selected = [0, 0];
  const [si, sj] = selected;
  const top = si * stride - padding;
  const left = sj * stride - padding;
  const inField = (r, c) => r >= top && r < top + w.length && c >= left && c < left + w[0].length;
  show("conv.x", nchw(x), (r, c) => (inField(r, c) ? "field" : ""));
  const terms = [];
  w.forEach((row, p) =>
    row.forEach((wv, q) => {
      const r = top + p;
      const c = left + q;
      const xv = r >= 0 && c >= 0 && r < x.length && c < x[0].length ? x[r][c] : 0;
      terms.push(`${fmt(xv)}·${wv < 0 ? `(${fmt(wv)})` : fmt(wv)}`);
    }),
  );
  $("conv-sum").textContent =
    `${t("sum_of")}[${si}][${sj}]: μ = ${terms.join(" + ")} + ${fmt(b)} = ${fmt(o[si][sj])}`;
}

async function check() {
  if (!conv) return;
  const which = $("check-which").value;
  const claimed = nchw(matrix("check-claimed"));
  const answer = await post("/v1/check", {
    op: "conv2d",
    params: { stride: conv.stride, padding: conv.padding },
    x: nchw(conv.x), w: nchw(conv.w), b: [conv.b], dout: nchw(conv.dout),
    claimed: { [which]: claimed },
  });
  const result = answer.tensors[which];
  const worst = result.worst_index || [];
  show("check.claimed", claimed, (i, j) =>
    !result.passed && worst[2] === i && worst[3] === j ? "worst" : "");
  const el = $("check-verdict");
  el.textContent = result.passed ? t("passed", which) : t("failed", result.message);
  el.className = `verdict ${result.passed ? "ok" : "bad"}`;
}

// ------------------------------------------------------------------ pooling

async function updatePool() {
  const x = matrix("pool-x");
  const dout = matrix("pool-dout");
  show("pool.x", nchw(x));
  show("pool.dout", nchw(dout));
  show("pool.dout_upsampled", nchw(dout.flatMap((r) => [r, r]).map((r) => r.flatMap((v) => [v, v]))));
  for (const mode of ["max", "avg"]) {
    const body = { x: nchw(x), mode, kernel_size: 2, stride: 2 };
    const fwd = await post("/v1/pool2d/forward", body);
    const bwd = await post("/v1/pool2d/backward", { ...body, dout: nchw(dout) });
    show(`pool.${mode}.out`, fwd.out);
    show(`pool.${mode}.dx`, bwd.dx, (i, j) => (plane(bwd.dx)[i][j] !== 0 ? "field" : ""));
  }
}

// ------------------------------------------------------------------ shapes

async function updateShapes() {
  const [W1, H1, D1, F, K, S, P] = ["s-w1", "s-h1", "s-d1", "s-f", "s-k", "s-s", "s-p"].map(num);
  const note = $("shapes-note");
  try {
    const answer = await post("/v1/shapes", {
      input_shape: [1, D1, H1, W1],
      layers: [{ type: "conv2d", out_channels: K, kernel_size: F, stride: S, padding: P }],
    });
    const [layer] = answer.layers;
    const [, D2, H2, W2] = layer.output_shape;
    show("shapes.W2", W2);
    show("shapes.H2", H2);
    show("shapes.D2", D2);
    show("shapes.params", layer.param_count);
    const [rows, cols] = layer.unused;
    note.textContent = layer.exact ? t("exact") : t("unused", cols, rows);
    note.className = "note";
  } catch (err) {
    for (const name of ["shapes.W2", "shapes.H2", "shapes.D2", "shapes.params"]) {
      tensorEl(name).textContent = "—";
      tensorEl(name).dataset.values = "null";
    }
    note.textContent = err.message; // the API's words: which size and the formula
    note.className = "note error";
    if (err instanceof ApiError && err.status === 401) throw err;
  }
}

// ------------------------------------------------------------------ digits

const pixels = Array.from({ length: 8 }, () => Array(8).fill(0));
let cursor = [3, 3];

function drawPad() {
  const ctx = $("pad").getContext("2d");
  const cell = $("pad").width / 8;
  pixels.forEach((row, i) =>
    row.forEach((v, j) => {
      const g = Math.round(255 * (1 - v));
      ctx.fillStyle = `rgb(${g},${g},${g})`;
      ctx.fillRect(j * cell, i * cell, cell, cell);
    }),
  );
  if (document.activeElement === $("pad")) {
    ctx.strokeStyle = "#d33";
    ctx.lineWidth = 2;
    ctx.strokeRect(cursor[1] * cell + 1, cursor[0] * cell + 1, cell - 2, cell - 2);
  }
  show("digits.x", [[pixels.map((r) => [...r])]]);
}

function paint(i, j) {
  if (i < 0 || j < 0 || i > 7 || j > 7) return;
  pixels[i][j] = 1;
  for (const [di, dj] of [[1, 0], [-1, 0], [0, 1], [0, -1]]) {
    const r = i + di;
    const c = j + dj;
    if (r >= 0 && c >= 0 && r < 8 && c < 8) pixels[r][c] = Math.max(pixels[r][c], 0.5);
  }
}

let pending = null;
function classifySoon() {
  clearTimeout(pending);
  pending = setTimeout(() => run(classify), 120);
}

async function classify() {
  const x = { name: "x", datatype: "FP32", shape: [1, 1, 8, 8], data: [[pixels]] };
  const probs = await post("/v2/models/digits/infer", {
    inputs: [x, { name: "labels", datatype: "INT64", shape: [1], data: [0] }],
    outputs: [{ name: "probabilities" }],
  });
  const p = probs.outputs[0].data;
  const predicted = p.indexOf(Math.max(...p));
  show("digits.probabilities", [p]);
  const onehot = Array(p.length).fill(0);
  onehot[predicted] = 1;
  const grads = await post("/v2/models/digits/infer", {
    inputs: [x, { name: "out_grad", datatype: "FP32", shape: [1, p.length], data: onehot }],
    outputs: [{ name: "grad/x" }],
  });
  const g = grads.outputs[0].data;
  const saliency = [[Array.from({ length: 8 }, (_, i) => g.slice(8 * i, 8 * i + 8))]];
  show("digits.saliency", saliency);
  drawBars(p, predicted);
  drawHeat(saliency[0][0]);
}

function drawBars(p, predicted) {
  const bars = $("bars");
  bars.replaceChildren(
    ...p.map((v, k) => {
      const row = document.createElement("div");
      row.className = k === predicted ? "bar predicted" : "bar";
      const label = document.createElement("span");
      label.textContent = String(k);
      const fill = document.createElement("span");
      fill.className = "fill";
      fill.style.width = `${(100 * v).toFixed(1)}%`;
      const value = document.createElement("span");
      value.textContent = `${(100 * v).toFixed(1)}%`;
      row.append(label, fill, value);
      row.setAttribute("aria-label", `${k}: ${(100 * v).toFixed(1)}%`);
      return row;
    }),
  );
  bars.title = t("predicted", predicted);
}

function drawHeat(s) {
  const ctx = $("heat").getContext("2d");
  const cell = $("heat").width / 8;
  const peak = Math.max(1e-12, ...s.flat().map(Math.abs));
  s.forEach((row, i) =>
    row.forEach((v, j) => {
      const a = Math.abs(v) / peak;
      ctx.fillStyle = v >= 0 ? `rgba(200,30,30,${a})` : `rgba(30,60,200,${a})`;
      ctx.clearRect(j * cell, i * cell, cell, cell);
      ctx.fillStyle = v >= 0 ? `rgba(200,30,30,${a})` : `rgba(30,60,200,${a})`;
      ctx.fillRect(j * cell, i * cell, cell, cell);
      const g = Math.round(255 * (1 - pixels[i][j]));
      ctx.strokeStyle = `rgba(${g},${g},${g},0.6)`;
      ctx.strokeRect(j * cell + 0.5, i * cell + 0.5, cell - 1, cell - 1);
    }),
  );
}

function setUpPad() {
  const pad = $("pad");
  const at = (e) => {
    const rect = pad.getBoundingClientRect();
    return [
      Math.floor(((e.clientY - rect.top) / rect.height) * 8),
      Math.floor(((e.clientX - rect.left) / rect.width) * 8),
    ];
  };
  let down = false;
  pad.addEventListener("pointerdown", (e) => {
    down = true;
    pad.setPointerCapture?.(e.pointerId);
    paint(...at(e));
    drawPad();
  });
  pad.addEventListener("pointermove", (e) => {
    if (!down) return;
    paint(...at(e));
    drawPad();
  });
  const end = () => {
    if (down) classifySoon();
    down = false;
  };
  pad.addEventListener("pointerup", end);
  pad.addEventListener("pointercancel", end);
  pad.addEventListener("focus", drawPad);
  pad.addEventListener("blur", drawPad);
  pad.addEventListener("keydown", (e) => {
    const moves = { ArrowUp: [-1, 0], ArrowDown: [1, 0], ArrowLeft: [0, -1], ArrowRight: [0, 1] };
    if (moves[e.key]) {
      cursor = [0, 1].map((k) => Math.min(7, Math.max(0, cursor[k] + moves[e.key][k])));
    } else if (e.key === " " || e.key === "Enter") {
      paint(...cursor);
      classifySoon();
    } else {
      return;
    }
    e.preventDefault();
    drawPad();
  });
  $("clear").addEventListener("click", () => {
    pixels.forEach((r) => r.fill(0));
    drawPad();
    classifySoon();
  });
}

// ------------------------------------------------------------------ wiring

let busy = 0;
async function run(...steps) {
  busy += 1;
  status(t("computing"));
  try {
    for (const step of steps) await step();
    if (busy === 1) status(t("ready"));
  } catch (err) {
    failed(err);
  } finally {
    busy -= 1;
    document.body.dataset.busy = String(busy);
  }
}

function onEdit(ids, step) {
  let timer = null;
  for (const id of ids) {
    $(id).addEventListener("input", () => {
      clearTimeout(timer);
      timer = setTimeout(() => run(step), 250);
    });
  }
}

function main() {
  translate();
  document.body.dataset.busy = "0";
  $("key-form").hidden = !apiKey();
  $("key-form").addEventListener("submit", (e) => {
    e.preventDefault();
    setApiKey($("api-key").value);
    run(updateConv, updatePool, updateShapes, classify);
  });
  onEdit(["conv-x", "conv-w", "conv-b", "conv-stride", "conv-padding", "conv-dout"], updateConv);
  onEdit(["pool-x", "pool-dout"], updatePool);
  onEdit(["s-w1", "s-h1", "s-d1", "s-f", "s-k", "s-s", "s-p"], updateShapes);
  $("check-run").addEventListener("click", () => run(check));
  setUpPad();
  drawPad();
  run(updateConv, updatePool, updateShapes, classify);
}

main();
