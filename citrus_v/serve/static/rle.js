// COCO compressed RLE (pycocotools' string form) -> a binary mask, in the browser.
// counts alternate zero-run, one-run, ... over the mask in COLUMN-major order; each count is
// written 5 bits per character (offset 48) with a sign bit, and from the third count on it is
// stored as a difference to the count two places back.
"use strict";

function rleCountsFromString(s) {
  const counts = [];
  let p = 0;
  while (p < s.length) {
    let x = 0, k = 0, more = true;
    while (more) {
      if (p >= s.length) throw new Error("RLE counts string ends inside a number");
      const c = s.charCodeAt(p) - 48;
      x |= (c & 0x1f) << (5 * k);
      more = (c & 0x20) !== 0;
      p++; k++;
      if (!more && (c & 0x10)) x |= -1 << (5 * k);
    }
    if (counts.length > 2) x += counts[counts.length - 2];
    counts.push(x);
  }
  return counts;
}

// -> Uint8Array of h*w in ROW-major order (1 = inside), ready to paint on a canvas
function rleDecode(rle) {
  const [h, w] = rle.size;
  const out = new Uint8Array(h * w);
  const counts = rleCountsFromString(rle.counts);
  let idx = 0, value = 0;
  for (const n of counts) {
    if (value) {
      for (let i = idx; i < idx + n && i < h * w; i++) {
        const x = Math.floor(i / h), y = i % h;  // column-major index -> (y, x)
        out[y * w + x] = 1;
      }
    }
    idx += n;
    value = 1 - value;
  }
  return out;
}

if (typeof module !== "undefined") module.exports = { rleDecode, rleCountsFromString };
