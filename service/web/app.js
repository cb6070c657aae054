// The clinician UI: plain JavaScript against the service's own API (no build step, no CDN).
// Everything shown comes from the API's fields: /v1/predict/view for a film, /v1/jobs for batches.
"use strict";

const $ = (id) => document.getElementById(id);
const KEY_STORAGE = "xray-api-key";
const view = {
  grey: null, width: 0, height: 0,   // the decoded film, 8-bit, as the service rendered it
  window: 255, level: 128,           // window/level over the 8-bit film
  zoom: 1, panX: 0, panY: 0,         // on top of "fit to the viewport"
  label: null, layers: {}, images: {},
};
let models = null;                   // /v1/models, fetched once, for the training-data summary
let job = null;                      // the batch job being watched
let jobRows = [];

// ------------------------------------------------------------------------------------------------ API plumbing

function authHeaders(extra = {}) {
  const key = sessionStorage.getItem(KEY_STORAGE);
  return key ? { ...extra, "X-API-Key": key } : extra;
}

function sentence(text) {
  const trimmed = String(text || "").trim();
  if (!trimmed) return "";
  const first = trimmed.charAt(0).toUpperCase() + trimmed.slice(1);
  return /[.!?]$/.test(first) ? first : first + ".";
}

async function api(path, options = {}) {
  let response;
  try {
    response = await fetch(path, { ...options, headers: authHeaders(options.headers || {}) });
  } catch (error) {
    throw new Error("The server could not be reached. Check the connection and try again.");
  }
  if (!response.ok) {
    let message = `The server refused the request (HTTP ${response.status}).`;
    try {
      const problem = await response.json();
      if (problem && problem.detail) message = sentence(problem.detail);
    } catch (_) { /* not a problem+json body: keep the generic sentence */ }
    if (response.status === 401) message += " Enter a valid API key under \u201cAPI key\u201d.";
    const error = new Error(message);
    error.status = response.status;
    throw error;
  }
  return response;
}

function showError(message) {
  $("error").textContent = message || "";
  $("error").hidden = !message;
}

function mediaType(file) {
  if (file.type === "image/png" || file.type === "image/jpeg" || file.type === "application/dicom") return file.type;
  if (/\.(dcm|dicom)$/i.test(file.name)) return "application/dicom";
  return "application/octet-stream";  // the server recognises the format by its content
}

function percent(p) { return `${(100 * p).toFixed(1)}%`; }

function loadImage(encoded) {
  return new Promise((resolve, reject) => {
    const image = new Image();
    image.onload = () => resolve(image);
    image.onerror = () => reject(new Error("The image sent by the server could not be shown."));
    image.src = `data:${encoded.media_type};base64,${encoded.data}`;
  });
}

// ------------------------------------------------------------------------------------------------ single film

async function scoreFile(file) {
  showError("");
  $("film-status").textContent = `Scoring ${file.name}\u2026`;
  try {
    const response = await api("/v1/predict/view", {
      method: "POST", body: file, headers: { "Content-Type": mediaType(file) },
    });
    await showPrediction(await response.json(), file.name);
    $("film-status").textContent = `${file.name} scored.`;
  } catch (error) {
    $("film-status").textContent = "";
    $("result").hidden = true;
    showError(error.message);
  }
}

async function showPrediction(prediction, name, note = "") {
  $("result").hidden = false;
  showFacts(prediction.image || {}, name);
  showFindings(prediction);
  showModel(prediction);
  view.layers = prediction.heat_layers || {};
  view.images = {};
  view.label = null;
  clearHeat();
  const viewer = $("viewport").parentElement;
  if (prediction.film) {
    viewer.querySelector(".viewport").hidden = false;
    await showFilm(prediction.film);
    $("heat-caption").textContent = note || (Object.keys(view.layers).length
      ? "Select a finding to overlay its heatmap." : "This model was exported without heatmaps.");
  } else {
    viewer.querySelector(".viewport").hidden = true;
    $("heat-caption").textContent = note;
  }
}

function showFacts(image, name) {
  const rows = [
    ["File", name],
    ["Format", (image.format || "").toUpperCase()],
    ["Modality", image.modality || "not stated"],
    ["View", image.view_position || "not stated"],
    ["Body part", image.body_part || "not stated"],
    ["Size", image.width ? `${image.width} \u00d7 ${image.height} px` : ""],
    ["Photometric", image.photometric || ""],
    ["Bits stored", image.bits_stored || ""],
    ["Transfer syntax", image.transfer_syntax || ""],
  ];
  fillList($("facts"), rows.filter(([, value]) => value !== "" && value !== null && value !== undefined));
}

function fillList(list, rows) {
  list.replaceChildren(...rows.flatMap(([term, value]) => {
    const dt = document.createElement("dt");
    dt.textContent = term;
    const dd = document.createElement("dd");
    dd.textContent = String(value);
    return [dt, dd];
  }));
}

function showFindings(prediction) {
  const reliability = prediction.reliability || { status: "reliable", reasons: [] };
  const unreliable = reliability.status !== "reliable";
  $("banner").hidden = !unreliable;
  $("reasons").replaceChildren(...(reliability.reasons || []).map((reason) => {
    const li = document.createElement("li");
    li.textContent = sentence(reason);
    return li;
  }));
  const block = $("findings-block");
  block.classList.toggle("greyed", unreliable);
  block.hidden = unreliable;
  $("show-anyway").setAttribute("aria-expanded", "false");
  $("show-anyway").textContent = "Show findings anyway";

  const abnormal = prediction.abnormal;
  const verdict = $("verdict");
  verdict.className = `verdict ${abnormal.positive ? "positive" : "negative"}`;
  const headline = abnormal.source === "abnormal_head" ? "Abnormality" : `Most likely finding (${abnormal.label})`;
  verdict.innerHTML = "";
  const strong = document.createElement("strong");
  strong.textContent = `${headline}: ${abnormal.positive ? "detected" : "not detected"}`;
  const detail = document.createElement("div");
  detail.textContent = `probability ${percent(abnormal.probability)}, threshold ${percent(abnormal.threshold)}`;
  verdict.append(strong, detail);

  const findings = [...prediction.findings].sort(
    (a, b) => (b.positive - a.positive) || (b.probability - a.probability));
  $("findings").replaceChildren(...findings.map((finding) => {
    const li = document.createElement("li");
    const button = document.createElement("button");
    button.type = "button";
    button.className = `finding${finding.positive ? " positive" : ""}`;
    button.dataset.label = finding.label;
    button.setAttribute("aria-pressed", "false");
    const name = document.createElement("span");
    name.className = "name";
    name.textContent = finding.positive ? `${finding.label} \u2014 positive` : finding.label;
    const value = document.createElement("span");
    value.className = "value";
    value.textContent = percent(finding.probability);
    const spoken = document.createElement("span");
    spoken.className = "sr-only";
    spoken.textContent = `, threshold ${percent(finding.threshold)}${finding.positive ? "" : ", below threshold"}`;
    const bar = document.createElement("span");
    bar.className = "bar";
    bar.setAttribute("aria-hidden", "true");
    const fill = document.createElement("span");
    fill.className = "fill";
    fill.style.width = percent(Math.min(1, Math.max(0, finding.probability)));
    const mark = document.createElement("span");
    mark.className = "threshold";
    mark.style.left = percent(Math.min(1, Math.max(0, finding.threshold)));
    mark.title = `threshold ${percent(finding.threshold)}`;
    bar.append(fill, mark);
    button.append(name, value, spoken, bar);
    button.addEventListener("click", () => selectLabel(finding.label));
    li.append(button);
    return li;
  }));
}

function showModel(prediction) {
  const rows = [];
  for (const [role, model] of Object.entries(prediction.models || {})) {
    rows.push([role === "classifier" ? "Classifier" : "Outlier gate",
      `${model.name} v${model.version} (${model.precision}, ${model.device})`]);
  }
  const training = models && models.models && models.models.classifier && models.models.classifier.training_data;
  if (training) {
    rows.push(["Trained on", `${training.train_images ?? "?"} films from ${(training.sources || []).join(", ")}`]);
    if (training.provenance) rows.push(["Data licences", training.provenance]);
  }
  if (prediction.outlier) {
    rows.push(["Outlier verdict", `${prediction.outlier.verdict.replace("_", " ")}`]);
  }
  if (prediction.timings_ms) {
    rows.push(["Time", `${prediction.timings_ms.total} ms (decode ${prediction.timings_ms.decode} ms, ` +
      `inference ${prediction.timings_ms.inference_incl_queue} ms)`]);
  }
  if (prediction.intended_use) rows.push(["Intended use", prediction.intended_use]);
  fillList($("model-facts"), rows);
}

async function loadModels() {
  try {
    models = await (await api("/v1/models")).json();
  } catch (_) {
    models = null;  // the findings do not depend on it; a missing key is reported when the user scores a film
  }
}

// ------------------------------------------------------------------------------------------------ the viewer

async function showFilm(film) {
  const image = await loadImage(film);
  const scratch = document.createElement("canvas");
  scratch.width = image.naturalWidth;
  scratch.height = image.naturalHeight;
  const context = scratch.getContext("2d");
  context.drawImage(image, 0, 0);
  const rgba = context.getImageData(0, 0, scratch.width, scratch.height).data;
  view.width = scratch.width;
  view.height = scratch.height;
  view.grey = new Uint8ClampedArray(view.width * view.height);
  for (let i = 0; i < view.grey.length; i++) view.grey[i] = rgba[4 * i];
  for (const canvas of [$("film-canvas"), $("heat-canvas")]) {
    canvas.width = view.width;
    canvas.height = view.height;
  }
  view.window = 255; view.level = 128; view.zoom = 1; view.panX = 0; view.panY = 0;
  syncSliders();
  renderFilm();
  layout();
}

function renderFilm() {
  if (!view.grey) return;
  const canvas = $("film-canvas");
  const context = canvas.getContext("2d");
  const out = context.createImageData(view.width, view.height);
  const low = view.level - view.window / 2;
  const scale = 255 / Math.max(1, view.window);
  for (let i = 0; i < view.grey.length; i++) {
    const value = Math.max(0, Math.min(255, (view.grey[i] - low) * scale));
    out.data[4 * i] = out.data[4 * i + 1] = out.data[4 * i + 2] = value;
    out.data[4 * i + 3] = 255;
  }
  context.putImageData(out, 0, 0);
}

function layout() {
  // Both canvases sit in one transformed stage, so the heat layer stays on the film at any size, zoom and pan.
  if (!view.width) return;
  const port = $("viewport").getBoundingClientRect();
  const fit = Math.min(port.width / view.width, port.height / view.height);
  const scale = fit * view.zoom;
  const x = (port.width - view.width * scale) / 2 + view.panX;
  const y = (port.height - view.height * scale) / 2 + view.panY;
  $("stage").style.width = `${view.width}px`;
  $("stage").style.height = `${view.height}px`;
  $("stage").style.transform = `translate(${x}px, ${y}px) scale(${scale})`;
}

function syncSliders() {
  $("window").value = String(Math.round(view.window));
  $("level").value = String(Math.round(view.level));
}

function setWindowLevel(windowWidth, level) {
  view.window = Math.max(1, Math.min(255, windowWidth));
  view.level = Math.max(0, Math.min(255, level));
  syncSliders();
  renderFilm();
}

function zoomBy(factor) {
  view.zoom = Math.max(0.25, Math.min(16, view.zoom * factor));
  layout();
}

function resetView() {
  view.zoom = 1; view.panX = 0; view.panY = 0;
  setWindowLevel(255, 128);
  layout();
}

function clearHeat() {
  const canvas = $("heat-canvas");
  canvas.getContext("2d").clearRect(0, 0, canvas.width, canvas.height);
  for (const button of document.querySelectorAll(".finding")) button.setAttribute("aria-pressed", "false");
}

async function selectLabel(label) {
  view.label = label;
  for (const button of document.querySelectorAll(".finding")) {
    button.setAttribute("aria-pressed", String(button.dataset.label === label));
  }
  const layer = view.layers[label];
  const canvas = $("heat-canvas");
  const context = canvas.getContext("2d");
  context.clearRect(0, 0, canvas.width, canvas.height);
  if (!layer) {
    $("heat-caption").textContent = `No heatmap for ${label}.`;
    return;
  }
  view.images[label] = view.images[label] || await loadImage(layer);
  if (view.label !== label) return;  // another finding was selected meanwhile
  context.drawImage(view.images[label], 0, 0, canvas.width, canvas.height);
  $("heat-toggle").checked = true;
  applyHeatStyle();
  const pixels = context.getImageData(0, 0, canvas.width, canvas.height).data;
  let evidence = false;
  for (let i = 3; i < pixels.length && !evidence; i += 4) evidence = pixels[i] > 0;
  $("heat-caption").textContent = evidence
    ? `Heatmap: where the model found evidence for ${label} (brighter = more).`
    : `The model found no positive evidence for ${label} anywhere in this film.`;
}

function applyHeatStyle() {
  const canvas = $("heat-canvas");
  canvas.style.opacity = String(Number($("opacity").value) / 100);
  canvas.style.visibility = $("heat-toggle").checked ? "visible" : "hidden";
}

function bindViewer() {
  const port = $("viewport");
  let drag = null;
  port.addEventListener("pointerdown", (event) => {
    port.setPointerCapture(event.pointerId);
    const pan = event.shiftKey || event.button === 1 || event.button === 2;
    drag = { x: event.clientX, y: event.clientY, pan, window: view.window, level: view.level,
             panX: view.panX, panY: view.panY };
  });
  port.addEventListener("pointermove", (event) => {
    if (!drag) return;
    const dx = event.clientX - drag.x;
    const dy = event.clientY - drag.y;
    if (drag.pan) {
      view.panX = drag.panX + dx;
      view.panY = drag.panY + dy;
      layout();
    } else {
      setWindowLevel(drag.window + dx, drag.level + dy);  // right = wider window, down = higher level
    }
  });
  const end = () => { drag = null; };
  port.addEventListener("pointerup", end);
  port.addEventListener("pointercancel", end);
  port.addEventListener("contextmenu", (event) => event.preventDefault());
  port.addEventListener("wheel", (event) => {
    event.preventDefault();
    zoomBy(Math.exp(-event.deltaY * 0.0015));
  }, { passive: false });
  port.addEventListener("keydown", (event) => {
    const step = 20;
    const actions = {
      "+": () => zoomBy(1.25), "=": () => zoomBy(1.25), "-": () => zoomBy(0.8),
      ArrowLeft: () => { view.panX += step; layout(); }, ArrowRight: () => { view.panX -= step; layout(); },
      ArrowUp: () => { view.panY += step; layout(); }, ArrowDown: () => { view.panY -= step; layout(); },
      r: resetView, R: resetView,
      h: () => { $("heat-toggle").checked = !$("heat-toggle").checked; applyHeatStyle(); },
      H: () => { $("heat-toggle").checked = !$("heat-toggle").checked; applyHeatStyle(); },
    };
    if (actions[event.key]) {
      event.preventDefault();
      actions[event.key]();
    }
  });
  $("window").addEventListener("input", () => setWindowLevel(Number($("window").value), view.level));
  $("level").addEventListener("input", () => setWindowLevel(view.window, Number($("level").value)));
  $("opacity").addEventListener("input", applyHeatStyle);
  $("heat-toggle").addEventListener("change", applyHeatStyle);
  $("zoom-in").addEventListener("click", () => zoomBy(1.25));
  $("zoom-out").addEventListener("click", () => zoomBy(0.8));
  $("reset-view").addEventListener("click", resetView);
  new ResizeObserver(layout).observe(port);
  $("show-anyway").addEventListener("click", () => {
    const block = $("findings-block");
    block.hidden = !block.hidden;
    $("show-anyway").setAttribute("aria-expanded", String(!block.hidden));
    $("show-anyway").textContent = block.hidden ? "Show findings anyway" : "Hide findings";
  });
}

function bindDrop() {
  const drop = $("drop");
  $("file").addEventListener("change", () => {
    if ($("file").files.length) scoreFile($("file").files[0]);
  });
  drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    if (event.dataTransfer.files.length) scoreFile(event.dataTransfer.files[0]);
  });
}

// ------------------------------------------------------------------------------------------------ batch jobs

async function startJob(event) {
  event.preventDefault();
  showError("");
  const zip = $("batch-zip").files[0];
  const folder = $("batch-folder").value.trim();
  if (!zip && !folder) {
    showError("Choose a zip of films, or type a folder on the server.");
    return;
  }
  try {
    const options = zip
      ? { method: "POST", body: zip, headers: { "Content-Type": "application/zip" } }
      : { method: "POST", body: JSON.stringify({ folder }), headers: { "Content-Type": "application/json" } };
    job = await (await api("/v1/jobs", options)).json();
    jobRows = [];
    $("job").hidden = false;
    $("job-rows").hidden = true;
    showJob(job);
    pollJob(job.id);
  } catch (error) {
    showError(error.message);
  }
}

function showJob(status) {
  const counts = status.counts;
  $("job-title").textContent = `Job ${status.id.slice(0, 8)} \u2014 ${status.source.name}: ${status.state}`;
  $("job-progress").value = counts.total ? Math.round((100 * (counts.done + counts.skipped)) / counts.total) : 0;
  const parts = [`${counts.done} of ${counts.total} done`, `${counts.failed} could not be scored`];
  if (counts.skipped) parts.push(`${counts.skipped} skipped`);
  if (status.progress.images_per_s) parts.push(`${status.progress.images_per_s.toFixed(1)} films/s`);
  if (status.progress.eta_s && ["queued", "running"].includes(status.state)) {
    parts.push(`about ${Math.ceil(status.progress.eta_s)} s left`);
  }
  if (status.error) parts.push(sentence(status.error));
  $("job-counts").textContent = parts.join(" \u00b7 ");
  $("job-cancel").disabled = !["queued", "running"].includes(status.state);
}

async function pollJob(id) {
  while (job && job.id === id) {
    try {
      const status = await (await api(`/v1/jobs/${id}`)).json();
      job = status;
      showJob(status);
      if (!["queued", "running"].includes(status.state) && status.counts.remaining === 0) {
        await loadRows(id);
        return;
      }
    } catch (error) {
      showError(error.message);
      return;
    }
    await new Promise((resolve) => setTimeout(resolve, 1000));
  }
}

async function loadRows(id) {
  const text = await (await api(`/v1/jobs/${id}/results?format=jsonl`)).text();
  jobRows = text.split("\n").filter((line) => line.trim()).map((line) => JSON.parse(line));
  const body = $("job-rows").querySelector("tbody");
  body.replaceChildren(...jobRows.map((row) => {
    const tr = document.createElement("tr");
    tr.tabIndex = 0;
    const result = row.result;
    const cells = [
      String(row.position + 1),
      row.reference,
      row.state,
      result ? `${result.abnormal.positive ? "yes" : "no"} (${percent(result.abnormal.probability)})`
        : sentence((row.problem || {}).detail || ""),
      result ? result.findings.filter((f) => f.positive).map((f) => f.label).join(", ") || "none" : "",
      result ? result.reliability.status : "",
    ];
    tr.replaceChildren(...cells.map((text) => {
      const td = document.createElement("td");
      td.textContent = text;
      return td;
    }));
    const open = () => openRow(row);
    tr.addEventListener("click", open);
    tr.addEventListener("keydown", (event) => { if (event.key === "Enter" || event.key === " ") open(); });
    return tr;
  }));
  $("job-rows").hidden = false;
}

async function openRow(row) {
  showError("");
  switchPage("film");
  try {
    const response = await api(`/v1/jobs/${job.id}/items/${row.position}/view`);
    await showPrediction(await response.json(), row.reference);
    $("film-status").textContent = `${row.reference} (from job ${job.id.slice(0, 8)}).`;
  } catch (error) {
    if (row.result) {  // the film itself is gone (an unpacked zip is removed once its job is over)
      await showPrediction(row.result, row.reference, `${error.message} The stored result is shown.`);
    } else {
      $("result").hidden = true;
      showError(sentence((row.problem || {}).detail) || error.message);
    }
  }
}

async function download(format) {
  if (!job) return;
  try {
    const blob = await (await api(`/v1/jobs/${job.id}/results?format=${format}`)).blob();
    const link = document.createElement("a");
    link.href = URL.createObjectURL(blob);
    link.download = `job-${job.id}.${format}`;
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(link.href), 10000);
  } catch (error) {
    showError(error.message);
  }
}

async function cancelJob() {
  if (!job) return;
  try {
    showJob(await (await api(`/v1/jobs/${job.id}`, { method: "DELETE" })).json());
  } catch (error) {
    showError(error.message);
  }
}

// ------------------------------------------------------------------------------------------------ pages

function switchPage(name) {
  for (const page of ["film", "batch"]) {
    $(`page-${page}`).hidden = page !== name;
    $(`tab-${page}`).setAttribute("aria-selected", String(page === name));
    $(`tab-${page}`).tabIndex = page === name ? 0 : -1;
  }
  if (name === "film") layout();
}

function init() {
  const key = $("api-key");
  key.value = sessionStorage.getItem(KEY_STORAGE) || "";
  key.addEventListener("change", () => {
    if (key.value.trim()) sessionStorage.setItem(KEY_STORAGE, key.value.trim());
    else sessionStorage.removeItem(KEY_STORAGE);
    loadModels();
  });
  $("tab-film").addEventListener("click", () => switchPage("film"));
  $("tab-batch").addEventListener("click", () => switchPage("batch"));
  for (const tab of document.querySelectorAll("[role=tab]")) {  // arrow keys move between tabs (ARIA tabs pattern)
    tab.addEventListener("keydown", (event) => {
      if (event.key !== "ArrowLeft" && event.key !== "ArrowRight") return;
      const next = tab.id === "tab-film" ? "batch" : "film";
      switchPage(next);
      $(`tab-${next}`).focus();
    });
  }
  $("batch-form").addEventListener("submit", startJob);
  $("job-cancel").addEventListener("click", cancelJob);
  $("download-csv").addEventListener("click", () => download("csv"));
  $("download-jsonl").addEventListener("click", () => download("jsonl"));
  bindViewer();
  bindDrop();
  loadModels();
}

document.addEventListener("DOMContentLoaded", init);
