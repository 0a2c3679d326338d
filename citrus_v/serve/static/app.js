// The viewer: upload an image, ask, draw the answer's masks and boxes over the image;
// then a click on the image is a point prompt (shift-click: a negative point) sent with "prompts".
"use strict";

const COLORS = [[255, 64, 64], [64, 160, 255], [64, 220, 120], [255, 200, 40], [200, 90, 255], [255, 120, 200]];
const state = { image: null, masks: [], boxes: [], visible: [], url: null, points: [] };

const $ = (id) => document.getElementById(id);

function readAsDataURL(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(file);
  });
}

function loadImage(src) {
  return new Promise((resolve, reject) => {
    const img = new Image();
    img.onload = () => resolve(img);
    img.onerror = () => reject(new Error("the browser cannot show the decoded image"));
    img.src = src;
  });
}

function setStatus(text, isError) {
  const el = $("status");
  el.textContent = text;
  el.className = isError ? "error" : "muted";
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
    state.url = url;
    state.points = [];  // clicks belong to one image and one answer
    const data = await complete(url, prompt, null);
    await show(data);
    setStatus("Done: " + data.seg_masks_rle.length + " mask(s), " + data.boxes.length + " box(es).", false);
  } catch (err) {
    setStatus("Error: " + err.message, true);
  } finally {
    $("submit-button").disabled = false;
  }
}

function requestBody(url, text, prompts) {
  const body = {
    model: "citrus-v",
    messages: [{ role: "user", content: [{ type: "image_url", image_url: { url } }, { type: "text", text }] }],
    max_tokens: parseInt($("max-tokens-input").value, 10) || 256,
    return_images: true,  // the server's decoded image: what the model saw, and a DICOM the browser can show
  };
  if (prompts) body.prompts = prompts;
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

async function click(event) {
  if (!state.url || !state.image) return;
  const canvas = $("overlay-canvas");
  const rect = canvas.getBoundingClientRect();
  // the canvas is drawn at the image's own size and may be shown scaled: back to image pixels
  const x = Math.min(canvas.width - 1, Math.max(0, Math.floor((event.clientX - rect.left) * canvas.width / rect.width)));
  const y = Math.min(canvas.height - 1, Math.max(0, Math.floor((event.clientY - rect.top) * canvas.height / rect.height)));
  state.points.push([x, y, event.shiftKey ? 0 : 1]);
  setStatus("Refining with " + state.points.length + " point(s)…", false);
  try {
    // the clicks alone make the mask (text empty): SAM-style refinement through the same API
    const data = await complete(state.url, "", { points: state.points });
    await show(data);
    setStatus("Done: " + data.seg_masks_rle.length + " mask(s) from " + state.points.length + " point(s).", false);
  } catch (err) {
    state.points.pop();
    setStatus("Error: " + err.message, true);
  }
}

async function show(data) {
  state.image = await loadImage(data.images[0]);
  state.masks = data.seg_masks_rle.map((rle, i) => ({ rle, bits: rleDecode(rle), info: data.seg_masks_info[i] || {} }));
  state.boxes = data.boxes;
  state.visible = state.masks.map(() => true);
  $("answer").textContent = data.choices[0].message.content;
  $("reasoning").textContent = data.reasoning || "(none)";
  renderMaskList();
  renderBoxList();
  $("result").hidden = false;
  draw();
}

function renderMaskList() {
  const list = $("mask-list");
  list.replaceChildren();
  if (!state.masks.length) { list.textContent = "(none)"; return; }
  state.masks.forEach((m, i) => {
    const [r, g, b] = COLORS[i % COLORS.length];
    const li = document.createElement("li");
    const box = document.createElement("input");
    box.type = "checkbox"; box.checked = true; box.id = "mask-toggle-" + i;
    box.addEventListener("change", () => { state.visible[i] = box.checked; draw(); });
    const label = document.createElement("label");
    label.htmlFor = box.id;
    const swatch = document.createElement("span");
    swatch.className = "swatch"; swatch.style.background = `rgb(${r},${g},${b})`;
    const area = m.bits.reduce((s, v) => s + v, 0);
    label.append(swatch, `mask ${i + 1}${m.info.label ? " (" + m.info.label + ")" : ""}: ${area} px, score ${m.info.score ?? "?"}`);
    li.append(box, label);
    list.append(li);
  });
}

function renderBoxList() {
  const list = $("box-list");
  list.replaceChildren();
  if (!state.boxes.length) { list.textContent = "(none)"; return; }
  for (const b of state.boxes) {
    const li = document.createElement("li");
    li.textContent = `${b.label || "box"}: [${b.bbox.join(", ")}]`
      + (b.text_bbox ? ` (as written [${b.text_bbox.join(", ")}], tightened by the segmenter, predicted IoU ${b.score})` : "");
    list.append(li);
  }
}

function draw() {
  const canvas = $("overlay-canvas");
  const img = state.image;
  canvas.width = img.naturalWidth;
  canvas.height = img.naturalHeight;
  const ctx = canvas.getContext("2d");
  ctx.drawImage(img, 0, 0);
  const frame = ctx.getImageData(0, 0, canvas.width, canvas.height);
  const px = frame.data;
  state.masks.forEach((m, i) => {
    if (!state.visible[i]) return;
    const [h, w] = m.rle.size;
    if (h !== canvas.height || w !== canvas.width) return;  // a mask for another image of the request
    const [r, g, b] = COLORS[i % COLORS.length];
    for (let p = 0; p < m.bits.length; p++) {
      if (!m.bits[p]) continue;
      // 50 % blend keeps the anatomy under the mask readable
      px[4 * p] = (px[4 * p] + r) >> 1;
      px[4 * p + 1] = (px[4 * p + 1] + g) >> 1;
      px[4 * p + 2] = (px[4 * p + 2] + b) >> 1;
    }
  });
  ctx.putImageData(frame, 0, 0);
  ctx.lineWidth = Math.max(1, Math.round(canvas.width / 256));
  ctx.font = `${Math.max(10, Math.round(canvas.width / 40))}px sans-serif`;
  state.boxes.forEach((b, i) => {
    if ((b.image_index || 0) !== 0) return;
    const [x1, y1, x2, y2] = b.bbox;
    const [r, g, bl] = COLORS[(i + 3) % COLORS.length];
    ctx.strokeStyle = ctx.fillStyle = `rgb(${r},${g},${bl})`;
    if (b.text_bbox) {  // the box as the model wrote it, dashed, under the tightened one
      const [t1, u1, t2, u2] = b.text_bbox;
      ctx.setLineDash([4 * ctx.lineWidth, 4 * ctx.lineWidth]);
      ctx.strokeRect(t1, u1, t2 - t1, u2 - u1);
      ctx.setLineDash([]);
    }
    ctx.strokeRect(x1, y1, x2 - x1, y2 - y1);
    if (b.label) ctx.fillText(b.label, x1 + 2, Math.max(y1 - 3, 10));
  });
  for (const [x, y, label] of state.points) {
    ctx.beginPath();
    ctx.arc(x + 0.5, y + 0.5, Math.max(2, Math.round(canvas.width / 100)), 0, 2 * Math.PI);
    ctx.fillStyle = label ? "rgb(40,220,40)" : "rgb(230,30,30)";
    ctx.fill();
  }
  canvas.dataset.drawn = String(Date.now());
}

async function loadModelName() {
  try {
    const r = await fetch("/readyz");
    const d = await r.json();
    $("model-name").textContent = d.model ? "model: " + d.model : "model " + d.status;
  } catch (err) { /* the header is decoration; asking still works */ }
}

$("ask-form").addEventListener("submit", ask);
$("overlay-canvas").addEventListener("click", click);
loadModelName();
