// The viewer: upload an image, ask, read the answer (a report as Findings / Impression, its boxes
// linked to the overlay) over the image's masks and boxes; then refine with points (click,
// shift-click: negative) or a drawn box, undo and reset, adjust window/level and mask opacity,
// name and colour each structure, download the masks (PNG) and the report. A refinement replaces
// the masks only: the answer, its report and its boxes stay.
"use strict";

const state = {
  url: null, base: null, values: null, answer: null, masks: [], boxes: [], highlight: -1,
  prompts: { points: [], box: null }, history: [], colors: {}, wl: [256, 128], opacity: 0.5,
  tool: "point", drag: null, dragStart: null,
};

const $ = (id) => document.getElementById(id);

function readAsDataURL(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(file);
  });
}

async function loadPixels(src) {
  const img = await new Promise((resolve, reject) => {
    const el = new Image();
    el.onload = () => resolve(el);
    el.onerror = () => reject(new Error("the browser cannot show the decoded image"));
    el.src = src;
  });
  const c = document.createElement("canvas");
  c.width = img.naturalWidth; c.height = img.naturalHeight;
  const ctx = c.getContext("2d");
  ctx.drawImage(img, 0, 0);
  return ctx.getImageData(0, 0, c.width, c.height);
}

function setStatus(text, isError) {
  const el = $("status");
  el.textContent = text;
  el.className = isError ? "error" : "muted";
}

function requestBody(url, text, prompts) {
  const body = {
    model: "citrus-v",
    messages: [{ role: "user", content: [{ type: "image_url", image_url: { url } }, { type: "text", text }] }],
    max_tokens: parseInt($("max-tokens-input").value, 10) || 256,
    return_images: true,  // the server's decoded image: what the model saw, and a DICOM the browser can show
  };
  if (prompts) body.prompts = prompts;
  else if ($("tiles-input").checked) body.tiles = "auto";  // clicks refine one mask on the whole image
  return body;
}

async function complete(url, text, prompts) {
  const headers = { "Content-Type": "application/json" };
  const key = $("api-key-input").value.trim();
  if (key) headers["Authorization"] = "Bearer " + key;
  const body = JSON.stringify(requestBody(url, text, prompts));
  const response = await fetch("/v1/chat/completions", { method: "POST", headers, body });
  const data = await response.json();
  if (!response.ok) throw new Error(data.error ? data.error.message : "HTTP " + response.status);
  return data;
}

async function ask(event) {
  event.preventDefault();
  const file = $("image-input").files[0];
  const prompt = $("prompt-input").value;
  if (!file) { setStatus("Choose an image first.", true); return; }
  $("submit-button").disabled = true;
  setStatus("Running…", false);
  try {
    let url = await readAsDataURL(file);
    // FileReader gives "data:;base64," for unknown types (.dcm): the server sniffs the bytes anyway
    url = url.replace(/^data:;base64,/, "data:application/dicom;base64,");
    const data = await complete(url, prompt, null);
    state.url = url;
    state.prompts = { points: [], box: null };  // prompts belong to one image and one answer
    state.history = [];
    state.base = await loadPixels(data.images[0]);
    state.values = decodeValues((data.image_values || [])[0]);
    fillPresets();
    asSent();
    state.answer = { ...data, prompt };
    showAnswer(state.answer);
    setMasks(data);
    setStatus("Done: " + data.seg_masks_rle.length + " mask(s), " + data.boxes.length + " box(es).", false);
  } catch (err) {
    setStatus("Error: " + err.message, true);
  } finally {
    $("submit-button").disabled = false;
  }
}

function colorOf(label, i) {
  const key = label || "mask " + (i + 1);
  if (!state.colors[key]) state.colors[key] = PALETTE[Object.keys(state.colors).length % PALETTE.length];
  return state.colors[key];
}

function setMasks(data) {
  state.masks = data.seg_masks_rle.map((rle, i) => {
    const info = data.seg_masks_info[i] || {};
    return { bits: rleDecode(rle), size: rle.size, info, visible: true, color: colorOf(info.label, i) };
  });
  renderMaskList();
  $("result").hidden = false;
  draw();
}

function draw() {
  if (!state.base) return;
  render($("overlay-canvas"), { base: state.base, values: state.values, masks: state.masks, boxes: state.boxes, highlight: state.highlight,
                                prompts: state.prompts, drag: state.drag, wl: state.wl, opacity: state.opacity });
}

async function refine(action) {
  if (!state.url || !state.base) return;
  const { points, box } = state.prompts;
  if (!points.length && !box) {  // every prompt undone: the answer's own masks again
    setMasks(state.answer);
    setStatus("Done: the answer's " + state.answer.seg_masks_rle.length + " mask(s).", false);
    return;
  }
  const what = (points.length ? points.length + " point(s)" : "") + (points.length && box ? " and " : "") + (box ? "a box" : "");
  setStatus(action + " with " + what + "…", false);
  try {
    // the prompts alone make the mask (text empty): SAM-style refinement through the same API
    const data = await complete(state.url, "", box ? { points, box } : { points });
    setMasks(data);
    setStatus("Done: " + data.seg_masks_rle.length + " mask(s) from " + what + ".", false);
  } catch (err) {
    undoPrompt();
    draw();
    setStatus("Error: " + err.message, true);
  }
}

function pushPrompt(change) {
  state.history.push({ points: state.prompts.points.slice(), box: state.prompts.box });
  change(state.prompts);
  refine("Refining");
}

function undoPrompt() {
  const previous = state.history.pop();
  if (previous) state.prompts = previous;
  return previous !== undefined;
}

function toImagePixel(event) {
  const canvas = $("overlay-canvas");
  const rect = canvas.getBoundingClientRect();
  // the canvas is drawn at the image's own size and may be shown scaled: back to image pixels
  const x = Math.min(canvas.width - 1, Math.max(0, Math.floor((event.clientX - rect.left) * canvas.width / rect.width)));
  const y = Math.min(canvas.height - 1, Math.max(0, Math.floor((event.clientY - rect.top) * canvas.height / rect.height)));
  return [x, y];
}

function onClick(event) {
  if (state.tool !== "point" || !state.base) return;
  const [x, y] = toImagePixel(event);
  pushPrompt((p) => p.points.push([x, y, event.shiftKey ? 0 : 1]));
}

function onDown(event) {
  if (state.tool === "point" || !state.base) return;
  state.dragStart = { xy: toImagePixel(event), client: [event.clientX, event.clientY], wl: state.wl && state.wl.slice() };
}

function onMove(event) {
  const start = state.dragStart;
  if (!start) return;
  if (state.tool === "box") {
    const [x, y] = toImagePixel(event);
    state.drag = [Math.min(x, start.xy[0]), Math.min(y, start.xy[1]), Math.max(x, start.xy[0]) + 1, Math.max(y, start.xy[1]) + 1];
  } else {
    dragWindow(start, event.clientX - start.client[0], event.clientY - start.client[1]);
  }
  draw();
}

function onUp() {
  const box = state.drag;
  state.dragStart = null;
  state.drag = null;
  if (state.tool === "box" && box && box[2] - box[0] >= 2 && box[3] - box[1] >= 2) pushPrompt((p) => { p.box = box; });
  else draw();
}

function presets() {
  return state.values ? (state.values.unit === "HU" ? HU_PRESETS : { "As sent": null }) : WL_PRESETS;
}

function fillPresets() {
  $("wl-preset").replaceChildren(...Object.keys(presets()).map((name) => new Option(name, name)));
  const v = state.values;  // the sliders span the values' range (a DICOM), or the grey levels 0..255
  const [wMax, lMin, lMax] = v ? [Math.max(2, 2 * (v.max - v.min)), Math.floor(v.min), Math.ceil(v.max)] : [512, 0, 255];
  Object.assign($("wl-width"), { min: 1, max: wMax });
  Object.assign($("wl-level"), { min: lMin, max: lMax });
}

function setWindow(width, level) {
  const v = state.values;
  const [wMax, lMin, lMax] = v ? [+$("wl-width").max, +$("wl-level").min, +$("wl-level").max] : [512, 0, 255];
  state.wl = [Math.min(wMax, Math.max(1, width)), Math.min(lMax, Math.max(lMin, level))];
  $("wl-width").value = state.wl[0];
  $("wl-level").value = state.wl[1];
  $("wl-readout").textContent = `W ${state.wl[0]} L ${state.wl[1]}` + (v ? " " + (v.unit === "HU" ? "HU" : "(modality units)") : "");
}

function asSent() {
  $("wl-preset").value = "As sent";
  if (!state.values) { setWindow(256, 128); return; }
  state.wl = null;  // the server's own display of the file
  const [c, w] = state.values.window;
  $("wl-readout").textContent = `as sent (about W ${Math.round(w)} L ${Math.round(c)} ${state.values.unit === "HU" ? "HU" : ""})`.replace(" )", ")");
}

function applyPreset() {
  const chosen = presets()[$("wl-preset").value];
  if (chosen) setWindow(...chosen); else asSent();
  draw();
}

function dragWindow(start, dx, dy) {
  // right widens the window, down raises the level (darker), as PACS viewers; a DICOM's values move
  // by about its range / 256 per CSS pixel
  const v = state.values;
  const step = v ? Math.max(1, Math.round((v.max - v.min) / 256)) : 1;
  const from = start.wl || (v ? [v.window[1], v.window[0]] : [256, 128]);
  setWindow(Math.round(from[0] + dx * step), Math.round(from[1] - dy * step));
}

function reset() {
  state.prompts = { points: [], box: null };
  state.history = [];
  state.highlight = -1;
  asSent();
  state.opacity = 0.5;
  $("opacity").value = 50;
  if (state.answer) { setMasks(state.answer); setStatus("Reset: the answer's masks, no prompts.", false); }
}

function bindControls() {
  $("ask-form").addEventListener("submit", ask);
  const canvas = $("overlay-canvas");
  canvas.addEventListener("click", onClick);
  canvas.addEventListener("mousedown", onDown);
  window.addEventListener("mousemove", onMove);
  window.addEventListener("mouseup", onUp);
  for (const tool of ["point", "box", "wl"]) $("tool-" + tool).addEventListener("change", () => { state.tool = tool; });
  fillPresets();
  $("wl-preset").addEventListener("change", applyPreset);
  $("wl-width").addEventListener("input", () => { setWindow(+$("wl-width").value, +$("wl-level").value); draw(); });
  $("wl-level").addEventListener("input", () => { setWindow(+$("wl-width").value, +$("wl-level").value); draw(); });
  $("opacity").addEventListener("input", () => { state.opacity = +$("opacity").value / 100; draw(); });
  $("undo-button").addEventListener("click", () => { if (undoPrompt()) refine("Undone; refining"); });
  $("reset-button").addEventListener("click", reset);
  $("download-report").addEventListener("click", downloadReport);
}

async function loadModelName() {
  try {
    const r = await fetch("/readyz");
    const d = await r.json();
    $("model-name").textContent = d.model ? "model: " + d.model : "model " + d.status;
  } catch (err) { /* the header is decoration; asking still works */ }
}

bindControls();
loadModelName();
