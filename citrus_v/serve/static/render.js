// Drawing for the viewer: window/level on the shown image, masks blended at an opacity in each
// structure's colour, boxes (a highlighted one thicker), prompts. Pure functions of the state.
"use strict";

const PALETTE = ["#ff4040", "#40a0ff", "#40dc78", "#ffc828", "#c85aff", "#ff78c8", "#30d5c8", "#ff9a3c"];
// window/level in the shown image's grey levels (0..255: the server's PNG, a DICOM already windowed
// by the server); W 256 L 128 shows the image as it is
const WL_PRESETS = { "As sent": [256, 128], "High contrast": [128, 128], "Dark structures": [128, 64],
                     "Bright structures": [128, 192], "Narrow": [64, 128] };

// window/level on a DICOM's own values (Hounsfield units for CT): [W, L], null = the server's display
const HU_PRESETS = { "As sent": null, "Soft tissue": [400, 40], "Lung": [1500, -600], "Bone": [1800, 400],
                     "Brain": [80, 40], "Liver": [150, 30] };

function decodeValues(info) {
  // {unit, dtype, shape, invert, window, data: base64 little-endian} -> a typed array and its facts
  if (!info) return null;
  const bytes = Uint8Array.from(atob(info.data), (c) => c.charCodeAt(0));
  const Kind = { int16: Int16Array, float32: Float32Array, float64: Float64Array, uint16: Uint16Array }[info.dtype];
  if (!Kind) return null;
  const array = new Kind(bytes.buffer);
  let min = Infinity, max = -Infinity;
  for (const v of array) { if (v < min) min = v; if (v > max) max = v; }
  return { ...info, array, min, max };
}

function windowValues(px, values, width, level) {
  // the values through a linear window: L - W/2 .. L + W/2 -> 0..255 (MONOCHROME1 inverted)
  const lo = level - width / 2, a = values.array;
  for (let p = 0; p < a.length; p++) {
    let g = Math.round((a[p] - lo) / width * 255);
    g = g < 0 ? 0 : g > 255 ? 255 : g;
    if (values.invert) g = 255 - g;
    px[4 * p] = px[4 * p + 1] = px[4 * p + 2] = g;
  }
}

function hexToRgb(hex) {
  const n = parseInt(hex.slice(1), 16);
  return [(n >> 16) & 255, (n >> 8) & 255, n & 255];
}

function windowLut(width, level) {
  // lo..hi (W grey levels around L) -> 0..255; identity for W 256 L 128
  const lut = new Uint8ClampedArray(256);
  const lo = level - width / 2, hi = lo + width - 1;
  for (let v = 0; v < 256; v++) lut[v] = hi <= lo ? (v >= level ? 255 : 0) : Math.round((v - lo) * 255 / (hi - lo));
  return lut;
}

function blendMask(px, bits, rgb, opacity) {
  // floor(p + (c - p) * a): at a = 0.5 exactly (p + c) >> 1
  for (let p = 0; p < bits.length; p++) {
    if (!bits[p]) continue;
    for (let c = 0; c < 3; c++) px[4 * p + c] = Math.floor(px[4 * p + c] + (rgb[c] - px[4 * p + c]) * opacity);
  }
}

function drawBoxes(ctx, boxes, highlight, width) {
  const line = Math.max(1, Math.round(width / 256));
  ctx.font = `${Math.max(10, Math.round(width / 40))}px sans-serif`;
  boxes.forEach((b, i) => {
    if ((b.image_index || 0) !== 0) return;
    const [x1, y1, x2, y2] = b.bbox;
    ctx.strokeStyle = ctx.fillStyle = PALETTE[(i + 3) % PALETTE.length];
    ctx.lineWidth = i === highlight ? 3 * line : line;
    if (b.text_bbox) {  // the box as the model wrote it, dashed, under the tightened one
      const [t1, u1, t2, u2] = b.text_bbox;
      ctx.setLineDash([4 * line, 4 * line]);
      ctx.strokeRect(t1, u1, t2 - t1, u2 - u1);
      ctx.setLineDash([]);
    }
    ctx.strokeRect(x1, y1, x2 - x1, y2 - y1);
    if (b.label) ctx.fillText(b.label, x1 + 2, Math.max(y1 - 3, 10));
  });
}

function drawPrompts(ctx, prompts, drag, width) {
  ctx.lineWidth = Math.max(1, Math.round(width / 256));
  for (const box of [prompts.box, drag].filter(Boolean)) {
    ctx.strokeStyle = "rgb(255,255,0)";
    ctx.setLineDash([2, 2]);
    ctx.strokeRect(box[0], box[1], box[2] - box[0], box[3] - box[1]);
    ctx.setLineDash([]);
  }
  for (const [x, y, label] of prompts.points) {
    ctx.beginPath();
    ctx.arc(x + 0.5, y + 0.5, Math.max(2, Math.round(width / 100)), 0, 2 * Math.PI);
    ctx.fillStyle = label ? "rgb(40,220,40)" : "rgb(230,30,30)";
    ctx.fill();
  }
}

function render(canvas, view) {
  // view: {base: ImageData, values (a DICOM's, or null), masks: [{bits, size, color, visible}], boxes, highlight,
  //        prompts, drag, wl ([W, L]; null with values: as sent), opacity}
  const { base } = view;
  canvas.width = base.width;
  canvas.height = base.height;
  const ctx = canvas.getContext("2d");
  const frame = new ImageData(new Uint8ClampedArray(base.data), base.width, base.height);
  const px = frame.data;
  if (view.values) {
    if (view.wl && view.values.array.length === base.width * base.height) windowValues(px, view.values, view.wl[0], view.wl[1]);
  } else if (view.wl[0] !== 256 || view.wl[1] !== 128) {
    const lut = windowLut(view.wl[0], view.wl[1]);
    for (let i = 0; i < px.length; i += 4) { px[i] = lut[px[i]]; px[i + 1] = lut[px[i + 1]]; px[i + 2] = lut[px[i + 2]]; }
  }
  for (const m of view.masks) {
    if (!m.visible || m.size[0] !== base.height || m.size[1] !== base.width) continue;  // another image's mask
    blendMask(px, m.bits, hexToRgb(m.color), view.opacity);
  }
  ctx.putImageData(frame, 0, 0);
  drawBoxes(ctx, view.boxes, view.highlight, base.width);
  drawPrompts(ctx, view.prompts, view.drag, base.width);
  canvas.dataset.drawn = String(Date.now());
}

function maskPng(bits, size) {
  // one mask as a black/white PNG data URL at the image's size
  const [h, w] = size;
  const c = document.createElement("canvas");
  c.width = w; c.height = h;
  const data = new ImageData(w, h);
  for (let p = 0; p < bits.length; p++) {
    const v = bits[p] ? 255 : 0;
    data.data[4 * p] = data.data[4 * p + 1] = data.data[4 * p + 2] = v;
    data.data[4 * p + 3] = 255;
  }
  c.getContext("2d").putImageData(data, 0, 0);
  return c.toDataURL("image/png");
}
