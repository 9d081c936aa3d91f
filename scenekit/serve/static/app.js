// The page: send the image to POST /predict, draw the JSON answer on a canvas over the image.
// Colours follow scenekit.viz.PALETTE (from /healthz), so a class looks as it does in `scenekit predict` pictures.
"use strict";

const state = { palette: [[230, 25, 75]], categories: {}, image: null, answer: null };
const $ = (id) => document.getElementById(id);

function colourFor(label) {
  const p = state.palette;
  return p[((label % p.length) + p.length) % p.length];
}

// COCO's compressed RLE string -> run lengths (pycocotools rleFrString: 5 bits a character, the sign bit of the
// last one extends, and from the third run on each value is a difference to the run two before).
function rleCounts(text) {
  const counts = [];
  let p = 0;
  while (p < text.length) {
    let x = 0, k = 0, more = 1;
    while (more) {
      const c = text.charCodeAt(p) - 48;
      x |= (c & 0x1f) << (5 * k);
      more = c & 0x20;
      p++; k++;
      if (!more && (c & 0x10)) x |= -1 << (5 * k);
    }
    if (counts.length > 2) x += counts[counts.length - 2];
    counts.push(x);
  }
  return counts;
}

// Paint an RLE mask (column-major, runs alternating background / foreground) into ImageData, blended.
function paintMask(pixels, width, rle, colour, alpha) {
  const counts = rleCounts(rle.counts);
  const height = rle.size[0];
  let position = 0;
  for (let i = 0; i < counts.length; i++) {
    if (i % 2 === 1) {
      for (let q = position; q < position + counts[i]; q++) {
        const x = Math.floor(q / height), y = q % height, o = 4 * (y * width + x);
        for (let c = 0; c < 3; c++) pixels[o + c] = Math.round((1 - alpha) * pixels[o + c] + alpha * colour[c]);
      }
    }
    position += counts[i];
  }
}

function draw() {
  const { image, answer } = state;
  if (!image || !answer) return;
  const canvas = $("canvas"), context = canvas.getContext("2d");
  canvas.width = image.naturalWidth; canvas.height = image.naturalHeight;
  context.drawImage(image, 0, 0);
  const minScore = parseFloat($("min-score").value);
  const shown = answer.detections.filter((d, i) => d.score >= minScore || i === 0);
  const masks = shown.filter((d) => d.mask).map((d) => [d.mask, d.label]);
  for (const region of answer.semantic || []) masks.push([region.mask, region.label]);
  if (masks.length) {
    const data = context.getImageData(0, 0, canvas.width, canvas.height);
    for (const [mask, label] of masks) paintMask(data.data, canvas.width, mask, colourFor(label), 0.45);
    context.putImageData(data, 0, 0);
  }
  context.font = "12px sans-serif";
  context.textBaseline = "top";
  for (const d of shown) {
    const [x1, y1, x2, y2] = d.box, colour = `rgb(${colourFor(d.label).join(",")})`;
    context.strokeStyle = colour; context.lineWidth = 2;
    context.strokeRect(x1 + 1, y1 + 1, Math.max(0, x2 - x1 - 2), Math.max(0, y2 - y1 - 2));
    const tag = `${d.name} ${d.score.toFixed(2)}`, width = context.measureText(tag).width + 4;
    const top = y1 - 15 >= 0 ? y1 - 15 : y1;
    context.fillStyle = colour; context.fillRect(x1, top, width, 15);
    context.fillStyle = "#000"; context.fillText(tag, x1 + 2, top + 1);
  }
  $("caption").textContent = answer.caption || "";
  const rows = shown.map((d) => `<tr><td>${d.name}</td><td>${d.score.toFixed(3)}</td>` +
                                `<td>${d.box.map((v) => v.toFixed(1)).join(", ")}</td></tr>`);
  $("detections").querySelector("tbody").innerHTML = rows.join("");
  // For tests and scripts: what was drawn, and the colour now at the first box's top-left corner.
  document.body.dataset.boxes = String(shown.length);
  document.body.dataset.masks = String(masks.length);
  if (shown.length) {
    const [x1, y1] = shown[0].box, px = context.getImageData(Math.round(x1) + 1, Math.round(y1) + 1, 1, 1).data;
    document.body.dataset.probe = `${px[0]},${px[1]},${px[2]}`;
    document.body.dataset.probeExpected = colourFor(shown[0].label).join(",");
  }
  document.body.dataset.caption = answer.caption || "";
  document.body.dataset.state = "drawn";
}

function setStatus(text, isError) {
  $("status").textContent = text;
  $("status").className = isError ? "error" : "";
}

async function send(blob, name) {
  document.body.dataset.state = "sending";
  setStatus(`sending ${name} ...`);
  const url = URL.createObjectURL(blob);
  const image = new Image();
  const loaded = new Promise((resolve, reject) => { image.onload = resolve; image.onerror = reject; });
  image.src = url;
  const form = new FormData();
  form.append("file", blob, name);
  try {
    const response = await fetch("/predict", { method: "POST", body: form });
    const answer = await response.json();
    if (!response.ok) throw new Error(answer.error || answer.detail || response.statusText);
    try { await loaded; } catch (e) { throw new Error("the browser cannot show this image"); }
    state.image = image; state.answer = answer;
    draw();
    const found = answer.caption ? `"${answer.caption}"` :
      answer.semantic ? `${answer.semantic.length} classes` : `${answer.detections.length} detections`;
    setStatus(`${answer.model}: ${found} in ${answer.seconds.toFixed(3)} s`);
  } catch (error) {
    document.body.dataset.state = "error";
    setStatus(`error: ${error.message}`, true);
  }
}

async function sendUrl(url) {
  const response = await fetch(url);
  if (!response.ok) { setStatus(`cannot fetch ${url}`, true); document.body.dataset.state = "error"; return; }
  await send(await response.blob(), url.split("/").pop().split("?")[0] || "image");
}

async function start() {
  try {
    const health = await (await fetch("/healthz")).json();
    state.palette = health.palette; state.categories = health.categories;
    $("model").textContent = health.model;
  } catch (e) { setStatus("the server does not answer /healthz", true); }
  const drop = $("drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault(); drop.classList.remove("over");
    if (e.dataTransfer.files.length) send(e.dataTransfer.files[0], e.dataTransfer.files[0].name);
  });
  $("file").addEventListener("change", (e) => { if (e.target.files.length) send(e.target.files[0], e.target.files[0].name); });
  $("example").addEventListener("click", (e) => { e.preventDefault(); sendUrl(`/example.png?seed=${Date.now() % 1000}`); });
  $("min-score").addEventListener("input", () => { $("min-score-value").textContent = parseFloat($("min-score").value).toFixed(2); draw(); });
  // ?image=URL (same origin) loads and sends an image at once: links to a result, and the browser test.
  const wanted = new URLSearchParams(location.search).get("image");
  if (wanted) await sendUrl(wanted);
}

start();
