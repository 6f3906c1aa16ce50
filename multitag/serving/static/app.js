// multitag web UI: pick or drop images, see predicted labels, correct them, send feedback.
// Plain browser JavaScript (no build step); talks to the same API as every other client.
"use strict";

const state = { limits: { max_files: 16 }, model: null };

const $ = (selector) => document.querySelector(selector);

/** The server's error as one readable line: our {reason, message} bodies or FastAPI's 422 list. */
function errorText(body, status) {
  const detail = body && body.detail;
  if (detail && detail.message) return detail.message;
  if (Array.isArray(detail)) return detail.map((d) => `${(d.loc || []).join(".")}: ${d.msg}`).join("; ");
  return typeof detail === "string" ? detail : `request failed (HTTP ${status})`;
}

/** fetch + JSON; throws an Error carrying the server's reason so callers can show it. */
async function api(path, options = {}) {
  const response = await fetch(path, options);
  const body = await response.json().catch(() => null);
  if (!response.ok) {
    const error = new Error(errorText(body, response.status));
    error.status = response.status;
    throw error;
  }
  return body;
}

function showMessage(text, isError = false) {
  const message = $("#message");
  message.textContent = text;
  message.classList.toggle("error", isError);
}

/** The model badge: version and alias, or how to get a model when there is none. */
async function refreshModel() {
  const badge = $("#model-status");
  try {
    const health = await api("/health");
    state.limits = health.limits;
    if (!health.model_loaded) {
      state.model = null;
      badge.textContent = "no model yet: run `make demo` to register a champion";
      badge.classList.add("missing");
      return;
    }
    if (!state.model || state.model.version !== health.model_version) state.model = await api("/model");
    badge.textContent = `model ${state.model.name} v${state.model.version} (${state.model.alias}, ${state.model.architecture})`;
    badge.dataset.version = state.model.version;
    badge.classList.remove("missing");
  } catch (error) {
    badge.textContent = `server unreachable: ${error.message}`;
    badge.classList.add("missing");
  }
}

async function refreshStats() {
  const badge = $("#feedback-stats");
  try {
    const stats = await api("/feedback/stats");
    badge.textContent = `feedback: ${stats.total} received, ${stats.pending} waiting for retraining`;
    badge.dataset.total = stats.total;
  } catch (error) {
    badge.textContent = `feedback stats unavailable: ${error.message}`;
  }
}

/** Send files in chunks the server accepts; one request (one batched model call) per chunk. */
async function predictFiles(fileList) {
  const files = Array.from(fileList).filter((file) => file.type.startsWith("image/") || file.type === "");
  if (!files.length) return showMessage("Those files are not images.", true);
  showMessage(`Tagging ${files.length} image(s)…`);
  let failed = 0;
  for (let start = 0; start < files.length; start += state.limits.max_files) {
    const chunk = files.slice(start, start + state.limits.max_files);
    const form = new FormData();
    chunk.forEach((file) => form.append("files", file, file.name));
    try {
      const { predictions } = await api("/predict", { method: "POST", body: form });
      if (!state.model || state.model.version !== predictions[0].model_version) await refreshModel();
      predictions.forEach((prediction, i) => renderResult(chunk[i], prediction));
    } catch (error) {
      failed += chunk.length;
      showMessage(error.message, true);
    }
  }
  if (!failed) showMessage(`Tagged ${files.length} image(s). Untick wrong labels, tick missing ones, then send a correction.`);
}

function renderResult(file, prediction) {
  const card = $("#result-template").content.firstElementChild.cloneNode(true);
  card.dataset.sha256 = prediction.image_sha256;
  card.querySelector(".thumb").src = URL.createObjectURL(file);
  card.querySelector(".thumb").alt = file.name;
  card.querySelector(".filename").textContent = prediction.filename;
  card.querySelector(".predicted").textContent = prediction.labels.length
    ? `Predicted: ${prediction.labels.join(", ")} (model v${prediction.model_version})`
    : `No class above its threshold (model v${prediction.model_version})`;
  const thresholds = (state.model && state.model.thresholds) || {};
  const rows = Object.entries(prediction.probabilities).sort((a, b) => b[1] - a[1]);
  for (const [name, probability] of rows) {
    card.querySelector(".classes").append(classRow(name, probability, thresholds[name], prediction.labels.includes(name)));
  }
  card.querySelector(".send").addEventListener("click", () => sendCorrection(card, prediction, file));
  $("#results").prepend(card);
}

function classRow(name, probability, threshold, predicted) {
  const row = $("#class-template").content.firstElementChild.cloneNode(true);
  const percent = Math.round(probability * 1000) / 10;
  row.dataset.class = name;
  row.classList.toggle("above", predicted);
  row.querySelector(".label-box").checked = predicted;
  row.querySelector(".label-box").value = name;
  row.querySelector(".class-name").textContent = name;
  row.querySelector(".fill").style.width = `${percent}%`;
  row.querySelector(".bar").setAttribute("aria-valuenow", percent);
  row.querySelector(".bar").setAttribute("aria-label", `${name} probability`);
  if (threshold === undefined) row.querySelector(".threshold").remove();
  else row.querySelector(".threshold").style.left = `${threshold * 100}%`;
  row.querySelector(".probability").textContent = `${percent.toFixed(1)}%`;
  return row;
}

/** Post the ticked labels for this image: by its hash (/predict stored the bytes), or with the
 * file itself when the server no longer keeps them (404: serve.prediction_retention_hours). */
async function sendCorrection(card, prediction, file) {
  const button = card.querySelector(".send");
  const status = card.querySelector(".sent");
  const labels = Array.from(card.querySelectorAll(".label-box:checked"), (box) => box.value);
  const post = (image) => {
    const form = new FormData();
    if (image) form.append("file", image, image.name);
    else form.append("image_sha256", prediction.image_sha256);
    form.append("labels", JSON.stringify(labels));
    form.append("model_version", prediction.model_version);
    return api("/feedback", { method: "POST", body: form });
  };
  button.disabled = true;
  try {
    const result = await post(null).catch((error) => (error.status === 404 ? post(file) : Promise.reject(error)));
    status.textContent = result.merged ? `Already queued as #${result.id}` : `Thanks! Queued as #${result.id}`;
    status.classList.remove("error");
    await refreshStats();
  } catch (error) {
    status.textContent = error.message;
    status.classList.add("error");
  } finally {
    button.disabled = false;
  }
}

function setUpDropZone() {
  const zone = $("#drop-zone");
  const input = $("#file-input");
  input.addEventListener("change", () => {
    predictFiles(input.files);
    input.value = "";
  });
  // Keep a drop anywhere on the page from navigating away to the image.
  window.addEventListener("dragover", (event) => event.preventDefault());
  window.addEventListener("drop", (event) => event.preventDefault());
  zone.addEventListener("dragenter", () => zone.classList.add("dragging"));
  zone.addEventListener("dragleave", () => zone.classList.remove("dragging"));
  zone.addEventListener("drop", (event) => {
    zone.classList.remove("dragging");
    predictFiles(event.dataTransfer.files);
  });
}

setUpDropZone();
refreshModel();
refreshStats();
setInterval(refreshModel, 15000);
