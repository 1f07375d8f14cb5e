// The capsule explorer's page: talks to the JSON API of
// capsnet_jax/inference/explorer.py (docs/explorer.md). No dependencies.
"use strict";

const $ = (id) => document.getElementById(id);

const state = {
  info: null,       // GET /api/info
  source: null,     // {kind: "canvas"} | {kind: "file", blob, name} | {kind: "test", index, label}
  angle: 0,
  cls: null,        // the capsule to reconstruct from; null: the prediction
  result: null,     // the last encode's answer
  offsets: [],      // added to each dimension of the shown capsule
};

// --------------------------------------------------------------------------
// Requests and errors.

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = false;
}

function clearError() {
  const box = $("error");
  box.textContent = "";
  box.hidden = true;
}

function setStatus(text) {
  $("status").textContent = text;
}

// fetch() that answers the JSON body, or throws an Error with the server's
// {"error": ...} (or what went wrong on the way).
async function api(path, options) {
  let response;
  try {
    response = await fetch(path, options);
  } catch (e) {
    throw new Error(`the server cannot be reached (${e.message})`);
  }
  let body = null;
  try {
    body = await response.json();
  } catch (e) {
    body = null;
  }
  if (!response.ok) {
    const why = body && body.error ? body.error : response.statusText;
    throw new Error(`${why} (HTTP ${response.status})`);
  }
  return body;
}

// Runs fn at most once at a time; calls made meanwhile run it once more when
// it ends (so dragging a slider sends the latest values, never a backlog).
// document.body.dataset[name] is "busy" while it runs, else "idle".
function coalesced(name, fn) {
  let running = false;
  let again = false;
  document.body.dataset[name] = "idle";
  return async function run() {
    if (running) {
      again = true;
      return;
    }
    running = true;
    document.body.dataset[name] = "busy";
    try {
      do {
        again = false;
        try {
          await fn();
        } catch (e) {
          showError(e.message);
        }
      } while (again);
    } finally {
      running = false;
      document.body.dataset[name] = "idle";
    }
  };
}

// --------------------------------------------------------------------------
// Encode: the input to capsules.

function canvasBlob() {
  return new Promise((resolve) => $("canvas").toBlob(resolve, "image/png"));
}

const encode = coalesced("encoding", async () => {
  const source = state.source;
  if (!source) return;
  const query = new URLSearchParams({angle: String(state.angle)});
  if (state.cls !== null) query.set("class", String(state.cls));
  let body = null;
  if (source.kind === "test") {
    query.set("test_index", String(source.index));
  } else if (source.kind === "file") {
    body = source.blob;
  } else {
    body = await canvasBlob();
  }
  const start = performance.now();
  const result = await api(`/api/encode?${query}`, {
    method: "POST", body,
    headers: {"Content-Type": "application/octet-stream"},
  });
  if (source !== state.source) return;  // a newer input took over
  show(result);
  setStatus(`encode: ${Math.round(performance.now() - start)} ms`);
});

const randomDigit = coalesced("fetching", async () => {
  const query = new URLSearchParams({angle: String(state.angle)});
  if (state.cls !== null) query.set("class", String(state.cls));
  const start = performance.now();
  const result = await api(`/api/random?${query}`, {method: "GET"});
  state.source = {kind: "test", index: result.test_index, label: result.label};
  clearCanvas(false);
  $("source").textContent =
      `Test image #${result.test_index} (label ${result.label}).`;
  show(result);
  setStatus(`random test digit: ${Math.round(performance.now() - start)} ms`);
});

function show(result) {
  clearError();
  state.result = result;
  const names = state.info.class_names;
  const lengths = result.capsule_lengths;
  $("prediction").textContent = `Prediction: ${result.class_name} ` +
      `(capsule length ${lengths[result.prediction].toFixed(3)})`;
  const bars = $("bars");
  bars.replaceChildren();
  lengths.forEach((length, k) => {
    const bar = document.createElement("div");
    bar.className = "bar" + (k === result.prediction ? " predicted" : "") +
        (k === result.class ? " shown" : "");
    bar.dataset.class = String(k);
    bar.style.height = `${Math.max(0, Math.min(1, length)) * 100}%`;
    bar.title = `${names[k]}: ${length.toFixed(4)}`;
    const value = document.createElement("span");
    value.className = "value";
    value.textContent = length.toFixed(2);
    const label = document.createElement("span");
    label.className = "label";
    label.textContent = names[k];
    bar.append(value, label);
    bar.addEventListener("click", () => selectClass(k));
    bars.append(bar);
  });
  $("input-image").src = result.input;
  $("input-image").hidden = false;  // no image element shows before this
  if (state.source && state.source.kind !== "canvas") {
    paintCanvas(result.input);  // a file or test digit: what the model sees
  }
  if (result.reconstruction) {
    $("reconstruction").src = result.reconstruction;
    $("reconstruction").hidden = false;
  }
  $("reconstruction-caption").textContent =
      `the decoder's image of capsule ${names[result.class]}`;
  resetSliders();
  drawRouting();
}

function selectClass(k) {
  state.cls = k;
  $("class-select").value = String(k);
  encode();
}

// --------------------------------------------------------------------------
// Decode: one capsule, moved by the sliders, to an image.

const decode = coalesced("decoding", async () => {
  const result = state.result;
  if (!result || !state.info.has_decoder) return;
  const capsule = result.capsules[result.class].map(
      (v, i) => v + (state.offsets[i] || 0));
  const start = performance.now();
  const answer = await api("/api/decode", {
    method: "POST",
    headers: {"Content-Type": "application/json"},
    body: JSON.stringify({class: result.class, capsule}),
  });
  if (result !== state.result) return;  // a new encode took over
  clearError();
  $("reconstruction").src = answer.reconstruction;
  $("reconstruction").hidden = false;
  setStatus(`decode: ${Math.round(performance.now() - start)} ms`);
});

function buildSliders(dims) {
  const box = $("sliders");
  box.replaceChildren();
  state.offsets = new Array(dims).fill(0);
  for (let i = 0; i < dims; i++) {
    const row = document.createElement("label");
    row.className = "slider-row";
    const name = document.createElement("span");
    name.className = "dim-name";
    name.textContent = `d${i}`;
    const input = document.createElement("input");
    Object.assign(input, {type: "range", min: "-0.5", max: "0.5",
                          step: "0.01", value: "0"});
    input.className = "dim";
    input.dataset.dim = String(i);
    input.disabled = true;
    const output = document.createElement("output");
    output.id = `dim-value-${i}`;
    input.addEventListener("input", () => {
      state.offsets[i] = Number(input.value);
      updateSliderLabel(i);
      decode();
    });
    row.append(name, input, output);
    box.append(row);
  }
}

function updateSliderLabel(i) {
  const result = state.result;
  const output = $(`dim-value-${i}`);
  if (!output) return;
  if (!result) {
    output.textContent = "";
    return;
  }
  const base = result.capsules[result.class][i];
  const offset = state.offsets[i];
  const sign = offset >= 0 ? "+" : "";
  output.textContent = (base + offset).toFixed(2);
  output.title = `dimension ${i}: ${base.toFixed(3)} ${sign} ${offset.toFixed(2)}`;
}

function resetSliders() {
  const enabled = Boolean(state.result) && state.info.has_decoder;
  document.querySelectorAll("#sliders input.dim").forEach((input) => {
    const i = Number(input.dataset.dim);
    input.value = "0";
    state.offsets[i] = 0;
    input.disabled = !enabled;
    updateSliderLabel(i);
  });
}

// --------------------------------------------------------------------------
// The routing view.

// viridis, 5 stops, interpolated linearly.
const VIRIDIS = [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98],
                 [253, 231, 37]];

function colour(t) {
  const x = Math.max(0, Math.min(1, t)) * (VIRIDIS.length - 1);
  const i = Math.min(VIRIDIS.length - 2, Math.floor(x));
  const f = x - i;
  const c = VIRIDIS[i].map((a, j) => Math.round(a + f * (VIRIDIS[i + 1][j] - a)));
  return `rgb(${c[0]},${c[1]},${c[2]})`;
}

function drawRouting() {
  const result = state.result;
  const canvas = $("routing");
  const ctx = canvas.getContext("2d");
  if (!result || !result.routing) {
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    return;
  }
  const routing = result.routing;
  const weighted = $("routing-mode").value === "weighted";
  const lengths = routing.primary_lengths;
  const name = state.info.class_names[routing.class];
  const what = weighted ? "c × |u| (primary capsule length)" : "coupling c";
  let min;
  let max;
  if (routing.matrix) {
    const values = routing.matrix.map(
        (row, p) => row.map((c) => weighted ? c * lengths[p] : c));
    [min, max] = range(values.flat());
    drawMatrix(ctx, canvas, routing, values, min, max);
  } else {
    const values = routing.coupling.map((c, p) => weighted ? c * lengths[p] : c);
    [min, max] = range(values);
    drawGrid(ctx, canvas, routing, values, min, max);
  }
  const scale = `Colour: from the smallest value, ${min.toFixed(3)} (dark), ` +
      `to the largest, ${max.toFixed(3)} (yellow); uniform coupling is ` +
      `${routing.uniform.toFixed(2)}.`;
  $("routing-legend").textContent = routing.matrix ?
      `Efficient-CapsNet's self-attention routing: ${what} of each of the ` +
      `${routing.coupling.length} primary capsules (rows) to each class ` +
      `(columns); the shown class ${name} is framed. ${scale}` :
      `Dynamic routing: ${what} of each primary capsule to class ${name}, ` +
      `one tile per capsule type (${routing.grid[2]}), each over the ` +
      `${routing.grid[0]}×${routing.grid[1]} grid of positions. ${scale}`;
}

function range(values) {
  let min = Infinity;
  let max = -Infinity;
  values.forEach((v) => {
    if (v < min) min = v;
    if (v > max) max = v;
  });
  return [min, max];
}

// From the smallest value (dark) to the largest (yellow): routing's
// coefficients often differ by little from the uniform 1/K.
function shade(value, min, max) {
  return colour((value - min) / Math.max(max - min, 1e-12));
}

function drawGrid(ctx, canvas, routing, values, min, max) {
  const [h, w, types] = routing.grid;
  const cols = Math.min(types, Math.max(1, Math.ceil(Math.sqrt(types * 2))));
  const rows = Math.ceil(types / cols);
  const gap = 3;
  const cell = Math.max(1, Math.floor(Math.min(
      (340 - gap * (cols - 1)) / (cols * w), 24)));
  canvas.width = cols * w * cell + gap * (cols - 1);
  canvas.height = rows * h * cell + gap * (rows - 1);
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  for (let t = 0; t < types; t++) {
    const x0 = (t % cols) * (w * cell + gap);
    const y0 = Math.floor(t / cols) * (h * cell + gap);
    for (let i = 0; i < h; i++) {
      for (let j = 0; j < w; j++) {
        // Primary capsule index of (row i, column j, type t): (i * w + j) * types + t.
        ctx.fillStyle = shade(values[(i * w + j) * types + t], min, max);
        ctx.fillRect(x0 + j * cell, y0 + i * cell, cell, cell);
      }
    }
  }
}

function drawMatrix(ctx, canvas, routing, values, min, max) {
  const p = values.length;
  const k = values[0].length;
  const cell = Math.max(4, Math.min(16, Math.floor(300 / Math.max(p, k))));
  const left = 22;
  const top = 14;
  canvas.width = left + k * cell + 2;
  canvas.height = top + p * cell + 2;
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  ctx.font = "10px system-ui, sans-serif";
  ctx.fillStyle = "#5f6368";
  state.info.class_names.forEach((name, j) =>
      ctx.fillText(name, left + j * cell + cell / 2 - 3, 10));
  for (let i = 0; i < p; i++) {
    ctx.fillStyle = "#5f6368";
    ctx.fillText(String(i), 0, top + i * cell + cell - 3);
    for (let j = 0; j < k; j++) {
      ctx.fillStyle = shade(values[i][j], min, max);
      ctx.fillRect(left + j * cell, top + i * cell, cell, cell);
    }
  }
  ctx.strokeStyle = "#f9ab00";
  ctx.lineWidth = 2;
  ctx.strokeRect(left + routing.class * cell, top, cell, p * cell);
}

// --------------------------------------------------------------------------
// The drawing canvas (mouse, touch and pen through pointer events).

function clearCanvas(forget = true) {
  const canvas = $("canvas");
  const ctx = canvas.getContext("2d");
  ctx.fillStyle = "#000";
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  if (forget && state.source && state.source.kind === "canvas") {
    state.source = null;
  }
}

// The canvas shows an image (a data: URL), enlarged without smoothing.
function paintCanvas(url) {
  const image = new Image();
  image.onload = () => {
    const canvas = $("canvas");
    const ctx = canvas.getContext("2d");
    ctx.imageSmoothingEnabled = false;
    ctx.drawImage(image, 0, 0, canvas.width, canvas.height);
  };
  image.src = url;
}

function setUpCanvas() {
  const canvas = $("canvas");
  const ctx = canvas.getContext("2d");
  clearCanvas();
  let last = null;

  const point = (clientX, clientY) => {
    const box = canvas.getBoundingClientRect();
    return [(clientX - box.left) * canvas.width / box.width,
            (clientY - box.top) * canvas.height / box.height];
  };
  const begin = (x, y) => {
    if (!state.source || state.source.kind !== "canvas") {
      clearCanvas(false);
      state.source = {kind: "canvas"};
      $("source").textContent = "Your drawing.";
    }
    last = [x, y];
    stroke(x, y);
  };
  const stroke = (x, y) => {
    ctx.strokeStyle = "#fff";
    ctx.lineWidth = 20;
    ctx.lineCap = "round";
    ctx.lineJoin = "round";
    ctx.beginPath();
    ctx.moveTo(last[0], last[1]);
    ctx.lineTo(x, y);
    ctx.stroke();
    last = [x, y];
    encode();
  };
  const end = () => {
    if (last) encode();
    last = null;
  };

  if (window.PointerEvent) {
    canvas.addEventListener("pointerdown", (e) => {
      e.preventDefault();
      canvas.setPointerCapture(e.pointerId);
      begin(...point(e.clientX, e.clientY));
    });
    canvas.addEventListener("pointermove", (e) => {
      if (last) stroke(...point(e.clientX, e.clientY));
    });
    canvas.addEventListener("pointerup", end);
    canvas.addEventListener("pointercancel", end);
  } else {  // older touch browsers
    canvas.addEventListener("mousedown", (e) => begin(...point(e.clientX, e.clientY)));
    canvas.addEventListener("mousemove", (e) => {
      if (last) stroke(...point(e.clientX, e.clientY));
    });
    window.addEventListener("mouseup", end);
    canvas.addEventListener("touchstart", (e) => {
      e.preventDefault();
      const t = e.touches[0];
      begin(...point(t.clientX, t.clientY));
    }, {passive: false});
    canvas.addEventListener("touchmove", (e) => {
      e.preventDefault();
      const t = e.touches[0];
      if (last) stroke(...point(t.clientX, t.clientY));
    }, {passive: false});
    canvas.addEventListener("touchend", end);
  }
}

// --------------------------------------------------------------------------
// Files: the picker and drag and drop.

function useFile(file) {
  if (!file) return;
  clearCanvas(false);
  state.source = {kind: "file", blob: file, name: file.name};
  $("source").textContent = `File: ${file.name}`;
  encode();
}

function setUpFiles() {
  const drop = $("drop");
  $("file").addEventListener("change", (e) => {
    useFile(e.target.files[0]);
    e.target.value = "";  // the same file again still counts as a change
  });
  ["dragenter", "dragover"].forEach((type) => drop.addEventListener(type, (e) => {
    e.preventDefault();
    drop.classList.add("over");
  }));
  ["dragleave", "drop"].forEach((type) => drop.addEventListener(type, () => {
    drop.classList.remove("over");
  }));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    useFile(e.dataTransfer.files[0]);
  });
  // A file dropped beside the zone must not replace the page.
  window.addEventListener("dragover", (e) => e.preventDefault());
  window.addEventListener("drop", (e) => {
    e.preventDefault();
    if (e.dataTransfer && e.dataTransfer.files.length) useFile(e.dataTransfer.files[0]);
  });
}

// --------------------------------------------------------------------------
// Start.

async function start() {
  setUpCanvas();
  setUpFiles();
  $("clear").addEventListener("click", () => {
    clearCanvas();
    $("source").textContent = "Draw a digit (white on black), drop an image or pick a test digit.";
  });
  $("random").addEventListener("click", randomDigit);
  $("angle").addEventListener("input", () => {
    state.angle = Number($("angle").value);
    $("angle-value").textContent = `${state.angle}°`;
    encode();
  });
  $("class-select").addEventListener("change", () => {
    const value = $("class-select").value;
    state.cls = value === "auto" ? null : Number(value);
    encode();
  });
  $("reset").addEventListener("click", () => {
    resetSliders();
    decode();
  });
  $("routing-mode").addEventListener("change", drawRouting);

  try {
    state.info = await api("/api/info");
  } catch (e) {
    showError(`cannot read the model's description: ${e.message}`);
    return;
  }
  const info = state.info;
  $("input-caption").textContent = `the model's input (` +
      `${info.input_shape[0]}\u00d7${info.input_shape[1]}, rotated)`;
  $("model-info").textContent =
      `${info.model} on ${info.dataset}, step ${info.step} (${info.workdir})`;
  const select = $("class-select");
  info.class_names.forEach((name, k) => {
    const option = document.createElement("option");
    option.value = String(k);
    option.textContent = name;
    select.append(option);
  });
  buildSliders(info.dims);
  $("no-decoder").hidden = info.has_decoder;
  if (!info.random_available) {
    $("random").disabled = true;
    $("random").title = "no MNIST test set on the server's machine " +
        "(--config.idx_dir=DIR)";
  }
  document.body.dataset.ready = "true";
}

start();
