// multitag web UI: pick or drop images, see predicted labels, correct them, send feedback.
// Plain browser JavaScript (no build step); talks to the same API as every other client.
"use strict";

const REVIEWER_TOKEN_KEY = "multitag-reviewer-token";
const state = { limits: { max_files: 16 }, model: null, reviewerToken: sessionStorage.getItem(REVIEWER_TOKEN_KEY) || "" };

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
    error.reason = body && body.detail && body.detail.reason;
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
  if (!failed) showMessage(`Tagged ${files.length} image(s). ${MARKING_HINT}`);
}

function renderResult(file, prediction) {
  const card = resultCard(prediction, URL.createObjectURL(file), prediction.filename);
  card.querySelector(".send").addEventListener("click", () => sendCorrection(card, prediction, file));
  $("#results").prepend(card);
}

/** One answer as a card: thumbnail, predicted labels, a bar and a tick box per class (the upload and review views share it). */
function resultCard(prediction, thumbSrc, title) {
  const card = $("#result-template").content.firstElementChild.cloneNode(true);
  card.dataset.sha256 = prediction.image_sha256;
  card.querySelector(".thumb").src = thumbSrc;
  card.querySelector(".thumb").alt = title;
  card.querySelector(".filename").textContent = title;
  card.querySelector(".predicted").textContent = prediction.labels.length
    ? `Predicted: ${prediction.labels.join(", ")} (model v${prediction.model_version})`
    : `No class above its threshold (model v${prediction.model_version})`;
  const thresholds = (state.model && state.model.thresholds) || {};
  const rows = Object.entries(prediction.probabilities).sort((a, b) => b[1] - a[1]);
  for (const [name, probability] of rows) {
    card.querySelector(".classes").append(classRow(name, probability, thresholds[name], prediction.labels.includes(name)));
  }
  return card;
}

const MARKING_HINT = "Click a class once if it is in the image, twice if it is not; classes you leave alone stay unknown. Then send.";
const NEXT_MARK = { unknown: "present", present: "absent", absent: "unknown" };

/** Show a class row's mark: unknown (untouched: the box is indeterminate), present (ticked) or
 * absent (empty box, name struck through). Only what the user marks is sent as a correction. */
function setMark(row, mark) {
  const box = row.querySelector(".label-box");
  row.dataset.mark = mark;
  box.checked = mark === "present";
  box.indeterminate = mark === "unknown";
  box.setAttribute("aria-label", `${row.dataset.class}: ${mark}`);
  box.title = `${mark}; click for ${NEXT_MARK[mark]}`;
}

function classRow(name, probability, threshold, predicted) {
  const row = $("#class-template").content.firstElementChild.cloneNode(true);
  const percent = Math.round(probability * 1000) / 10;
  row.dataset.class = name;
  row.classList.toggle("above", predicted);  // the model's guess shows on the bar, not as a ticked box
  row.querySelector(".label-box").value = name;
  setMark(row, "unknown");
  row.querySelector(".label-box").addEventListener("click", () => setMark(row, NEXT_MARK[row.dataset.mark]));
  row.querySelector(".class-name").textContent = name;
  row.querySelector(".fill").style.width = `${percent}%`;
  row.querySelector(".bar").setAttribute("aria-valuenow", percent);
  row.querySelector(".bar").setAttribute("aria-label", `${name} probability`);
  if (threshold === undefined) row.querySelector(".threshold").remove();
  else row.querySelector(".threshold").style.left = `${threshold * 100}%`;
  row.querySelector(".probability").textContent = `${percent.toFixed(1)}%`;
  return row;
}

/** Post the classes marked present (`labels`) and absent (`absent`; the others are unknown) for this image: by its hash (/predict stored the bytes), or with the
 * file itself when the server no longer keeps them (404: serve.prediction_retention_hours).
 * `origin` tells the queue where the correction was made (the upload or the review view). */
async function sendCorrection(card, prediction, file, origin = "upload") {
  const button = card.querySelector(".send");
  const status = card.querySelector(".sent");
  const marked = (mark) => Array.from(card.querySelectorAll(`.class-row[data-mark='${mark}']`), (row) => row.dataset.class);
  const [labels, absent] = [marked("present"), marked("absent")];
  if (!labels.length && !absent.length) {
    status.textContent = `Mark at least one class first. ${MARKING_HINT}`;
    status.classList.add("error");
    return;
  }
  const post = (image) => {
    const form = new FormData();
    if (image) form.append("file", image, image.name);
    else form.append("image_sha256", prediction.image_sha256);
    form.append("labels", JSON.stringify(labels));
    form.append("absent", JSON.stringify(absent));
    form.append("model_version", prediction.model_version);
    form.append("origin", origin);
    return api("/feedback", { method: "POST", body: form });
  };
  button.disabled = true;
  try {
    const result = await post(null).catch((error) => (error.status === 404 && file ? post(file) : Promise.reject(error)));
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

/** Other users' photos need the reviewer token unless the server trusts this machine (serving/access.py). */
function reviewerHeaders() {
  return state.reviewerToken ? { Authorization: `Bearer ${state.reviewerToken}` } : {};
}

/** A stored photo as an object URL, fetched with the reviewer token (an <img src> cannot send it). */
async function showStoredImage(img, url) {
  try {
    const response = await fetch(url, { headers: reviewerHeaders() });
    if (response.ok) img.src = URL.createObjectURL(await response.blob());
  } catch (error) {
    img.alt = `${img.alt} (image unavailable: ${error.message})`;
  }
}

/** The review view: the images the server ranks most worth a look (GET /review), corrected with origin=review. */
async function loadReview() {
  const message = $("#review-message");
  message.classList.remove("error");
  message.textContent = "Loading the images most worth a look…";
  try {
    if (!state.model) await refreshModel();
    const review = await api("/review?n=20", { headers: reviewerHeaders() });
    $("#review-token-form").hidden = true;
    $("#review-list").replaceChildren(...review.items.map(reviewCard));
    message.textContent = review.items.length
      ? `${review.items.length} image(s) worth a look, as model v${review.model_version} answered them. ${MARKING_HINT}`
      : "Nothing to review: no recent prediction is left that nobody has labelled.";
  } catch (error) {
    const needsToken = ["reviewer_token_required", "reviewer_token_not_set"].includes(error.reason);
    $("#review-token-form").hidden = error.reason !== "reviewer_token_required";
    if (needsToken) $("#review-list").replaceChildren();
    message.textContent = error.reason === "reviewer_token_required" && state.reviewerToken
      ? "That reviewer token was refused: enter the one set on the server (MULTITAG_REVIEWER_TOKEN)."
      : error.message;
    message.classList.add("error");
  }
}

/** Keep the reviewer token for this tab only (sessionStorage), then load the list with it. */
function useReviewerToken(event) {
  event.preventDefault();
  state.reviewerToken = $("#review-token").value.trim();
  sessionStorage.setItem(REVIEWER_TOKEN_KEY, state.reviewerToken);
  loadReview();
}

function reviewCard(item) {
  const card = resultCard(item, "", item.reason);
  showStoredImage(card.querySelector(".thumb"), item.image_url);
  card.classList.add("review-item");
  if (item.challenger_labels) {
    const challenger = item.challenger_labels.length ? item.challenger_labels.join(", ") : "nothing";
    card.querySelector(".predicted").textContent += `; challenger v${item.challenger_version}: ${challenger}`;
  }
  card.querySelector(".send").addEventListener("click", () => sendCorrection(card, item, null, "review"));
  return card;
}

/** The results view: the server's page of per-class results and mistakes (GET /results, a reviewer's
 * page), shown in a frame; fetched with the reviewer token, which an iframe src could not send. */
async function loadModelResults() {
  const message = $("#model-results-message");
  const frame = $("#model-results-frame");
  message.textContent = "Loading the results (the first time for a version takes a few seconds) …";
  const response = await fetch("/results", { headers: reviewerHeaders() });
  if (!response.ok) {
    const body = await response.json().catch(() => null);
    frame.hidden = true;
    message.textContent = body && body.detail && body.detail.reason === "reviewer_token_required"
      ? "Results show test photos, users' corrections among them: enter the reviewer token in the Review view first."
      : errorText(body, response.status);
    return;
  }
  frame.srcdoc = await response.text();
  frame.hidden = false;
  message.textContent = "";
}

const VIEWS = { "#review": "review", "#model-results": "model-results" };

/** Show the view the address names (#review, #model-results, else tagging), so a link or a reload opens it again. */
function showView() {
  const view = VIEWS[location.hash] || "tag";
  $("#tag-view").hidden = view !== "tag";
  $("#review-view").hidden = view !== "review";
  $("#model-results-view").hidden = view !== "model-results";
  document.querySelectorAll(".views a").forEach((link) => link.classList.toggle("active", link.dataset.view === view));
  if (view === "review") loadReview();
  if (view === "model-results") loadModelResults();
}

/** The drift panel (GET /drift): per class, how often the served version named it in its last
 * answers against how often it did on the frozen test split; drifted classes are highlighted. */
async function refreshDrift() {
  const panel = $("#drift-panel");
  const percent = (rate) => `${(rate * 100).toFixed(1)}%`;
  try {
    const drift = await api("/drift");
    const summaries = { drift: `${drift.drifted_classes.join(", ")} drifted`, no_drift: "none", not_enough_data: "not enough answers yet" };
    panel.dataset.status = drift.status;
    if (drift.status === "drift") panel.open = true;
    $("#drift-status").textContent = summaries[drift.status] || drift.status.replaceAll("_", " ");
    $("#drift-message").textContent = drift.message;
    const rows = drift.classes.map((c) => {
      const row = document.createElement("tr");
      row.dataset.class = c.name;
      row.classList.toggle("drifted", c.drifted);
      for (const text of [c.name, percent(c.live_rate), percent(c.reference_rate), c.adjusted_p_value.toPrecision(2)]) {
        row.append(Object.assign(document.createElement("td"), { textContent: text }));
      }
      return row;
    });
    $("#drift-table tbody").replaceChildren(...rows);
    $("#drift-table").hidden = !rows.length;
  } catch (error) {
    panel.dataset.status = "unavailable";
    $("#drift-status").textContent = "unavailable";
    $("#drift-message").textContent = error.message;
  }
}

setUpDropZone();
$("#review-refresh").addEventListener("click", loadReview);
$("#review-token-form").addEventListener("submit", useReviewerToken);
window.addEventListener("hashchange", showView);
showView();
refreshModel();
refreshStats();
setInterval(refreshModel, 15000);
refreshDrift();
setInterval(refreshDrift, 60000);
