// The vosd dashboard: polls GET /jobs, submits jobs (uploads or paths, PNG or drawn masks), shows a running
// job's live preview, stops and cancels.
// Plain browser JavaScript, no build step. The token is kept in localStorage and sent as a bearer token.
"use strict";

const $ = (id) => document.getElementById(id);
const POLL_MS = 1000;

function davisColour(label) {
  // The DAVIS palette (streamer/masks.py davis_palette): the bits of the label spread over R, G and B.
  let [r, g, b, value] = [0, 0, 0, label];
  for (let shift = 7; shift >= 0; shift--) {
    r |= (value & 1) << shift;
    g |= ((value >> 1) & 1) << shift;
    b |= ((value >> 2) & 1) << shift;
    value >>= 3;
  }
  return `rgb(${r}, ${g}, ${b})`;
}

function headers() {
  const token = $("token").value.trim();
  return token ? { Authorization: `Bearer ${token}` } : {};
}

async function api(path, options = {}) {
  const response = await fetch(path, { ...options, headers: { ...headers(), ...(options.headers || {}) } });
  if (!response.ok) {
    let text = `${response.status} ${response.statusText}`;
    try { text = (await response.json()).error || text; } catch (e) { /* not JSON: keep the status */ }
    throw new Error(text);
  }
  return response;
}

function say(text, isError = false) {
  $("message").textContent = text;
  $("message").className = isError ? "error" : "";
}

// ------------------------------------------------------------------------------------------ jobs table

function cell(row, text, className) {
  const td = row.insertCell();
  td.textContent = text;
  if (className) td.className = className;
  return td;
}

function latencyText(job) {
  // Live jobs: arrival at the decoder to mask written, median / 95th percentile of the recent frames.
  if (job.latency_p50_s == null) return "";
  const ms = (seconds) => `${Math.round(seconds * 1000)}`;
  return `${ms(job.latency_p50_s)} / ${ms(job.latency_p95_s ?? job.latency_p50_s)} ms`;
}

function jobRow(job) {
  const row = document.createElement("tr");
  row.dataset.id = job.id;
  cell(row, job.id);
  cell(row, job.source, "source").title = job.source;
  cell(row, job.state + (job.stopped_early ? " (stopped early)" : ""), `state state-${job.state}`).title =
    job.error || "";
  const bar = cell(row, "");
  const total = job.frames_total ? `/${job.frames_total}` : "";
  bar.innerHTML = `<span class="bar"><div style="width:${Math.round((job.progress || 0) * 100)}%"></div></span> `;
  bar.append(`${job.frames_done}${total}`);
  cell(row, job.fps.toFixed(1));
  cell(row, String(job.frames_dropped));
  cell(row, latencyText(job));
  cell(row, job.state === "running" ? job.source_state || "" : "");
  const outputs = cell(row, "");
  for (const [kind, url] of Object.entries(job.output_urls)) {
    if (kind === "masks") continue;
    const link = document.createElement("a");
    link.textContent = kind;
    link.href = "#";
    link.onclick = (event) => { event.preventDefault(); download(url); };
    outputs.append(link, " ");
  }
  const actions = cell(row, "");
  if (job.state === "running") actions.append(button("Preview", () => openPreview(job.id)));
  if (!["done", "failed", "cancelled"].includes(job.state)) {
    actions.append(button("Stop", () => control("POST", `/jobs/${job.id}/stop`)));
    actions.append(button("Cancel", () => control("DELETE", `/jobs/${job.id}`)));
  }
  return row;
}

function button(text, onclick) {
  const b = document.createElement("button");
  b.type = "button";
  b.textContent = text;
  b.className = text.toLowerCase();
  b.onclick = onclick;
  return b;
}

async function control(method, path) {
  try {
    say((await (await api(path, { method })).json()).message);
    refresh();
  } catch (error) { say(error.message, true); }
}

async function download(url) {
  // Outputs need the bearer token, so they are fetched here and handed to the browser as a blob.
  try {
    const blob = await (await api(url)).blob();
    window.open(URL.createObjectURL(blob), "_blank");
  } catch (error) { say(error.message, true); }
}

async function refresh() {
  try {
    const page = await (await api("/jobs?limit=50")).json();
    $("jobs").replaceChildren(...page.jobs.map(jobRow));
    $("connection").textContent = "";
  } catch (error) {
    $("connection").textContent = `(${error.message})`;
  }
}

function openPreview(id) {
  // An <img> cannot send the bearer token, so this one endpoint takes it as ?token= (streamer/api/auth.py).
  // The stream (MJPEG) ends with the job; the last frame stays shown.
  const token = $("token").value.trim();
  $("preview").src = `/jobs/${id}/preview` + (token ? `?token=${encodeURIComponent(token)}` : "");
  $("preview-job").textContent = `Job ${id}: newest overlay frames, up to five a second`;
  $("preview-panel").hidden = false;
}

function closePreview() {
  $("preview").removeAttribute("src");
  $("preview-panel").hidden = true;
}

// ---------------------------------------------------------------------------------------- mask drawing

const drawing = { image: null, polygons: [], points: [], object: 1 };

async function loadFrame() {
  try {
    let response;
    const video = $("video").files[0];
    if (video) {
      const form = new FormData();
      form.append("video", video);
      response = await api("/sources/first-frame", { method: "POST", body: form });
    } else {
      response = await api(`/sources/first-frame?source=${encodeURIComponent($("source").value.trim())}`);
    }
    drawing.image = await createImageBitmap(await response.blob());
    drawing.polygons = [];
    drawing.points = [];
    $("canvas").width = drawing.image.width;
    $("canvas").height = drawing.image.height;
    $("canvas").style.width = `${Math.max(480, drawing.image.width)}px`;  // small clips: draw at 480 px or more
    $("drawing").hidden = false;
    redraw();
    say("Click around each object; close each polygon; use Next object for another colour.");
  } catch (error) { say(error.message, true); }
}

function redraw() {
  const context = $("canvas").getContext("2d");
  context.drawImage(drawing.image, 0, 0);
  for (const polygon of drawing.polygons) {
    context.fillStyle = davisColour(polygon.object);
    context.globalAlpha = 0.5;
    context.beginPath();
    polygon.points.forEach(([x, y], i) => (i ? context.lineTo(x, y) : context.moveTo(x, y)));
    context.closePath();
    context.fill();
  }
  context.globalAlpha = 1;
  context.strokeStyle = davisColour(drawing.object);
  context.lineWidth = Math.max(1, drawing.image.width / 400);
  context.beginPath();
  drawing.points.forEach(([x, y], i) => (i ? context.lineTo(x, y) : context.moveTo(x, y)));
  context.stroke();
  $("object").textContent = drawing.object;
  $("object").style.color = davisColour(drawing.object);
}

function addPoint(event) {
  const canvas = $("canvas");
  const box = canvas.getBoundingClientRect();
  const x = ((event.clientX - box.left) * canvas.width) / box.width;
  const y = ((event.clientY - box.top) * canvas.height) / box.height;
  drawing.points.push([Math.round(x * 10) / 10, Math.round(y * 10) / 10]);
  redraw();
}

function closePolygon() {
  if (drawing.points.length < 3) return say("A polygon needs at least three points.", true);
  drawing.polygons.push({ object: drawing.object, points: drawing.points });
  drawing.points = [];
  redraw();
}

// ---------------------------------------------------------------------------------------------- submit

async function submit(event) {
  event.preventDefault();
  const form = new FormData();
  const video = $("video").files[0];
  const source = $("source").value.trim();
  if (video) form.append("video", video);
  else if (source) form.append("source", source);
  else return say("Give a source path or URL, or choose a video to upload.", true);
  if ($("mask").files[0]) form.append("mask", $("mask").files[0]);
  else if (drawing.polygons.length) {
    const { width, height } = drawing.image;
    form.append("mask_polygons", JSON.stringify({ width, height, polygons: drawing.polygons }));
  }
  const options = {};
  if ($("max-frames").value) options.max_frames = Number($("max-frames").value);
  form.append("options", JSON.stringify(options));
  if ($("live").checked) form.append("live", "true");
  try {
    const job = await (await api("/jobs", { method: "POST", body: form })).json();
    say(`Job ${job.id} queued.`);
    refresh();
  } catch (error) { say(error.message, true); }
}

$("token").value = localStorage.getItem("vosd-token") || "";
$("token").onchange = () => { localStorage.setItem("vosd-token", $("token").value.trim()); refresh(); };
$("close-preview").onclick = closePreview;
$("load-frame").onclick = loadFrame;
$("canvas").onclick = addPoint;
$("close-polygon").onclick = closePolygon;
$("next-object").onclick = () => { if (drawing.points.length >= 3) closePolygon(); drawing.object += 1; redraw(); };
$("clear").onclick = () => { drawing.polygons = []; drawing.points = []; drawing.object = 1; redraw(); };
$("submit").onsubmit = submit;
refresh();
setInterval(refresh, POLL_MS);
