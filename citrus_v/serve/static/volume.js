// Volumes in the viewer: upload a NIfTI file or the DICOM files of one series, segment it with
// POST /v1/volumes/segment, browse its slices with a slider (each slice's masks over it, one colour
// per structure), download the slice's masks (PNG), the 3D mask (segmentation.nii.gz), the DICOM SEG
// (DICOM input) and the report. Uses $ and readAsDataURL from app.js, render and maskPng from render.js.
"use strict";

const vol = { data: null, index: 0, base: null, opacity: 0.5 };

function volumeStatus(text, isError) {
  const el = $("volume-status");
  el.textContent = text;
  el.className = isError ? "error" : "muted";
}

async function volumeBody(files, prompt) {
  const list = [];
  for (const f of files) list.push({ name: f.name, data: (await readAsDataURL(f)).split(",", 2)[1] || "" });
  return { model: "citrus-v", prompt, files: list, axis: parseInt($("volume-axis").value, 10) };
}

async function segmentVolume(event) {
  event.preventDefault();
  const files = Array.from($("volume-input").files);
  if (!files.length) { volumeStatus("Choose a NIfTI file or the DICOM files of one series first.", true); return; }
  $("volume-submit").disabled = true;
  volumeStatus("Segmenting " + files.length + " file(s)…", false);
  try {
    const headers = { "Content-Type": "application/json" };
    const key = $("api-key-input").value.trim();
    if (key) headers["Authorization"] = "Bearer " + key;
    const body = JSON.stringify(await volumeBody(files, $("volume-prompt").value));
    const response = await fetch("/v1/volumes/segment", { method: "POST", headers, body });
    const data = await response.json();
    if (!response.ok) throw new Error(data.error ? data.error.message : "HTTP " + response.status);
    showVolume(data);
    volumeStatus("Done: " + data.slices.length + " slices.", false);
  } catch (err) {
    volumeStatus("Error: " + err.message, true);
  } finally {
    $("volume-submit").disabled = false;
  }
}

function showVolume(data) {
  vol.data = data;
  const slider = $("slice-slider");
  slider.max = String(data.slices.length - 1);
  const first = firstSliceWithMask(data);
  slider.value = String(first);
  $("volume-report").textContent = data.report;
  $("volume-structures").replaceChildren(...data.names.map((name, k) => {
    const s = data.structures[name], li = document.createElement("li");
    li.innerHTML = `<span class="swatch" style="background:${PALETTE[k % PALETTE.length]}"></span>`;
    li.append(`${name}: ${s.volume_ml.toFixed(1)} mL, largest diameter ${s.max_diameter_mm.toFixed(1)} mm`);
    return li;
  }));
  fileLink("download-volume-nifti", data.files.nifti, "segmentation.nii.gz");
  fileLink("download-volume-seg", data.files.dicom_seg, "segmentation.dcm");
  fileLink("download-volume-report", "data:text/plain;charset=utf-8," + encodeURIComponent(data.report), "citrus-v-volume-report.txt");
  $("volume-result").hidden = false;
  showSlice(first);
}

function firstSliceWithMask(data) {
  // the first slice where any structure has a mask, so the reader starts on a finding
  const k = data.slices.findIndex((s) => s.masks.some((m) => rleDecode(m).some((v) => v)));
  return k < 0 ? 0 : k;
}

function fileLink(id, url, name) {
  const link = $(id);
  link.hidden = !url;
  if (url) { link.href = url; link.download = name; }
}

async function showSlice(index) {
  const slice = vol.data.slices[index];
  vol.index = index;
  vol.base = await loadPixels(slice.image);
  if (vol.index !== index) return;  // the slider moved on while this slice loaded
  const masks = slice.masks.map((m, k) => ({ bits: rleDecode(m), size: m.size, color: PALETTE[k % PALETTE.length], visible: true }));
  render($("volume-canvas"), { base: vol.base, values: null, masks, boxes: [], highlight: -1,
    prompts: { points: [], box: null }, drag: null, wl: [256, 128], opacity: vol.opacity });
  $("slice-readout").textContent = `slice ${index + 1} / ${vol.data.slices.length}`;
  const links = $("volume-mask-links");
  links.replaceChildren(...masks.map((m, k) => {
    const a = document.createElement("a");
    a.id = "volume-mask-png-" + k; a.className = "download"; a.textContent = `${vol.data.names[k]} (PNG) `;
    a.href = maskPng(m.bits, m.size); a.download = `mask_slice${index}_${vol.data.names[k]}.png`;
    return a;
  }));
}

$("volume-form").addEventListener("submit", segmentVolume);
$("slice-slider").addEventListener("input", (e) => showSlice(parseInt(e.target.value, 10)));
$("volume-opacity").addEventListener("input", (e) => {
  vol.opacity = parseInt(e.target.value, 10) / 100;
  if (vol.data) showSlice(vol.index);
});
