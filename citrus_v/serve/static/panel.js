// The viewer's reading panel: the answer (a report as Findings / Impression with its cited boxes
// linked to the overlay), the masks (name, colour, visibility, PNG download) and the boxes.
"use strict";

function showAnswer(data) {
  state.boxes = data.boxes;
  state.highlight = -1;
  const report = data.report;
  const content = data.choices[0].message.content;
  // box JSON is read into the Boxes list and the overlay; the prose keeps a pointer to it
  const prose = content.replace(/```(?:json)?[\s\S]*?```/g, "[box: see Boxes]");
  $("answer").textContent = report ? "" : prose;
  $("raw-answer-text").textContent = content;
  $("raw-answer").hidden = !report && prose === content;
  $("reasoning").textContent = data.reasoning || "(none)";
  $("report").hidden = !report;
  if (report) renderReport(report);
  renderBoxList();
}

function renderReport(report) {
  $("report-findings").textContent = report.findings || "(none)";
  $("report-impression").textContent = report.impression || "(none)";
  const list = $("report-boxes");
  list.replaceChildren();
  report.boxes.forEach((b, k) => {
    const index = state.boxes.findIndex((s) => JSON.stringify(s.bbox) === JSON.stringify(b.bbox));
    const li = document.createElement("li");
    const link = document.createElement("button");
    link.type = "button"; link.className = "link"; link.id = "report-box-" + k;
    link.textContent = `${b.label || "box " + (k + 1)} [${b.bbox.join(", ")}]`;
    link.addEventListener("click", () => { state.highlight = state.highlight === index ? -1 : index; draw(); });
    li.append(link);
    list.append(li);
  });
  if (!report.boxes.length) list.textContent = "(none)";
}

function renderMaskList() {
  const list = $("mask-list");
  list.replaceChildren();
  if (!state.masks.length) { list.textContent = "(none)"; return; }
  state.masks.forEach((m, i) => list.append(maskItem(m, i)));
}

function maskItem(m, i) {
  const li = document.createElement("li");
  const box = document.createElement("input");
  box.type = "checkbox"; box.checked = m.visible; box.id = "mask-toggle-" + i;
  box.addEventListener("change", () => { m.visible = box.checked; draw(); });
  const colour = document.createElement("input");
  colour.type = "color"; colour.value = m.color; colour.id = "mask-color-" + i; colour.title = "this structure's colour";
  colour.addEventListener("input", () => recolour(m.info.label || "mask " + (i + 1), colour.value));
  const label = document.createElement("label");
  label.htmlFor = box.id;
  const area = m.bits.reduce((s, v) => s + v, 0);
  label.append(`mask ${i + 1}${m.info.label ? " (" + m.info.label + ")" : ""}: ${area} px, score ${m.info.score ?? "?"}`);
  const link = document.createElement("a");
  link.id = "mask-download-" + i; link.textContent = "PNG"; link.className = "download";
  link.download = `mask_${i + 1}${m.info.label ? "_" + m.info.label.replace(/[^A-Za-z0-9_-]+/g, "_") : ""}.png`;
  link.href = maskPng(m.bits, m.size);  // black/white at the image's size
  li.append(box, colour, label, " ", link);
  return li;
}

function recolour(key, value) {
  state.colors[key] = value;
  state.masks.forEach((m, i) => { if ((m.info.label || "mask " + (i + 1)) === key) m.color = value; });
  draw();
}

function renderBoxList() {
  const list = $("box-list");
  list.replaceChildren();
  if (!state.boxes.length) { list.textContent = "(none)"; return; }
  state.boxes.forEach((b, i) => {
    const li = document.createElement("li");
    li.textContent = `${b.label || "box"}: [${b.bbox.join(", ")}]`
      + (b.text_bbox ? ` (as written [${b.text_bbox.join(", ")}], tightened by the segmenter, predicted IoU ${b.score})` : "");
    li.addEventListener("click", () => { state.highlight = state.highlight === i ? -1 : i; draw(); });
    list.append(li);
  });
}

function reportMarkdown() {
  const a = state.answer;
  const lines = ["# citrus-v answer", "", "Prompt: " + a.prompt, ""];
  if (a.report) {
    lines.push("## Findings", "", a.report.findings || "(none)", "", "## Impression", "", a.report.impression || "(none)", "");
  } else {
    lines.push("## Answer", "", a.choices[0].message.content, "");
  }
  if (a.boxes.length) lines.push("## Boxes (image pixels x1, y1, x2, y2)", "", ...a.boxes.map((b) => `- ${b.label || "box"}: [${b.bbox.join(", ")}]`), "");
  state.masks.forEach((m, i) => lines.push(`- mask ${i + 1} ${m.info.label || ""}: ${m.bits.reduce((s, v) => s + v, 0)} px`));
  lines.push("", "Model: " + a.model);
  return lines.join("\n") + "\n";
}

function downloadReport() {
  if (!state.answer) return;
  const link = document.createElement("a");
  link.href = URL.createObjectURL(new Blob([reportMarkdown()], { type: "text/markdown" }));
  link.download = "citrus-v-report.md";
  document.body.append(link);
  link.click();
  link.remove();
}
