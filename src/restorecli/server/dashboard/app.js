// The restorecli dashboard: upload images and videos to POST /enhance, follow the job through GET /events/{id}
// (or poll GET /status/{id}), and show each result as a before/after slider (a video: two synchronised players).
// Plain ES2020, no dependencies.
//
// Every request goes through fetch() so that the API key, when the server has one, travels in the X-API-Key
// header; that is also why pictures and downloads are fetched into blob: URLs rather than linked directly.
// Strings from the server are only ever set as textContent.

import {
  appendFaceChoices, appendRestoreChoices, applyFaceChoices, applyRestoreChoices, setupRestoreChoices,
} from "./choices.js";
import { attachCompare, setDivider } from "./compare.js";
import { attachVideoCompare, loadVideos } from "./video.js";

const KEY_STORE = "restorecli.apiKey"; // sessionStorage: forgotten when the tab closes
const RECENT_STORE = "restorecli.recentJobs"; // localStorage: this browser's jobs
const RECENT_MAX = 20;
const POLL_MS = 1000;
const FINAL = new Set(["completed", "failed"]);
const STATE_TEXT = { queued: "Queued", processing: "Processing", completed: "Completed", failed: "Failed",
                     gone: "No longer on the server" };
const FILE_TEXT = { pending: "Waiting", processing: "Restoring…", ok: "Done", error: "Failed" };
const BASE = new URL(".", document.baseURI);

const $ = (id) => document.getElementById(id);

const state = {
  files: [], // File objects chosen and not yet sent
  limits: null, // {max_file_mb, max_files, max_video_mb, max_video_seconds, ...} from /health
  formats: null, // {images, videos, animated}: the suffixes an upload may hold, from /health
  authRequired: false,
  view: null, // the job on screen: {id, controller, urls, cards, zip, announced}
  alertFromConnection: false,
  keyDeclined: false, // the key dialog was cancelled
};

// ---------------------------------------------------------------------------------------------- requests

class ApiError extends Error {
  constructor(status, detail) {
    super(detail);
    this.status = status;
    this.detail = detail;
  }
}

function apiUrl(path) {
  // The server's paths are absolute ("/processed/..."); resolving them against the page's folder keeps the
  // dashboard working behind a proxy that serves it under a prefix.
  return new URL(String(path).replace(/^\/+/, ""), BASE);
}

let memoryKey = storedKey(); // the key sent, once given (also in sessionStorage where the browser allows)

function storedKey() {
  try {
    return sessionStorage.getItem(KEY_STORE) || "";
  } catch {
    return "";
  }
}

function storeKey(key) {
  try {
    if (key) sessionStorage.setItem(KEY_STORE, key);
    else sessionStorage.removeItem(KEY_STORE);
  } catch {
    // storage refused (private mode): the key lives only as long as this page
  }
  memoryKey = key;
}

async function responseDetail(response) {
  const text = await response.text().catch(() => "");
  try {
    const body = JSON.parse(text);
    if (body && typeof body.detail === "string") return body.detail;
  } catch {
    // not JSON: a proxy's page, say
  }
  return text.trim().slice(0, 300) || `${response.status} ${response.statusText}`.trim();
}

// A fetch with the API key. A 401 asks for the key (once, however many requests hit it) and tries again,
// except that a request made in the background (not by a button) does not ask again for a key the user
// declined to give. Any other answer that is not 2xx becomes an ApiError carrying the server's detail.
async function request(path, { method = "GET", body, signal, headers = {}, auth = true, interactive = false } = {}) {
  for (;;) {
    const sent = auth ? memoryKey : "";
    const given = new Headers(headers);
    if (sent) given.set("X-API-Key", sent);
    const response = await fetch(apiUrl(path), { method, body, signal, headers: given, cache: "no-store" });
    if (response.ok) return response;
    const detail = await responseDetail(response);
    if (response.status !== 401 || !auth) throw new ApiError(response.status, detail);
    state.authRequired = true;
    $("key-button").hidden = false;
    if (memoryKey === sent) storeKey("");
    const reason = sent ? `The server did not accept that key (${detail}). Try again.` : "";
    if (!memoryKey && !reason && state.keyDeclined && !interactive) throw new ApiError(401, detail);
    const key = memoryKey || (await askForKey(reason));
    if (!key) throw new ApiError(401, detail);
  }
}

// GET /health's document, also where the server answers 503 (degraded or stopping: the document says why, and
// still states the limits).
async function healthDocument() {
  const response = await fetch(apiUrl("health"), { cache: "no-store" });
  if (response.status !== 200 && response.status !== 503) {
    throw new ApiError(response.status, await responseDetail(response));
  }
  return response.json();
}

async function getJson(path, options) {
  const response = await request(path, options);
  return response.json();
}

async function fetchBlob(path, signal, interactive = false) {
  const response = await request(path, { signal, interactive });
  return { blob: await response.blob(), name: dispositionName(response.headers.get("Content-Disposition")) };
}

// The file name in a Content-Disposition header (RFC 6266: filename* wins over filename), or null.
function dispositionName(header) {
  if (!header) return null;
  const extended = /filename\*\s*=\s*[^']*'[^']*'([^;]+)/i.exec(header);
  if (extended) {
    try {
      return cleanName(decodeURIComponent(extended[1].trim()));
    } catch {
      // a malformed escape: try the plain form
    }
  }
  const plain = /filename\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^;]+))/i.exec(header);
  if (!plain) return null;
  return cleanName(plain[1] !== undefined ? plain[1].replace(/\\(.)/g, "$1") : plain[2].trim());
}

function cleanName(name) {
  const cleaned = name.split(/[/\\]/).pop().trim();
  return cleaned || null;
}

// What went wrong, in words a person can act on.
function explain(error, doing) {
  if (error && error.name === "AbortError") return "";
  if (!(error instanceof ApiError)) return `${doing} failed: the server could not be reached. Is it still running?`;
  const detail = error.detail.trim();
  switch (error.status) {
    case 401:
      return sentence(`The server refused the request (${detail}). Use the “API key…” button at the top to enter its key`);
    case 413:
      return sentence(`That is more than the server accepts: ${detail}`);
    case 415:
      return sentence(`The server could not read the upload: ${detail}`);
    case 422:
      return sentence(`${doing} was refused: ${detail}`);
    default:
      return sentence(`${doing} failed${error.status >= 500 ? " on the server" : ""}: ${detail}`);
  }
}

function sentence(text) {
  return /[.!?]$/.test(text) ? text : `${text}.`;
}

// ---------------------------------------------------------------------------------------------- the API key

let keyPrompt = null;

// Opens the key dialog (once, however many callers ask) and resolves with the key typed, or "" if cancelled.
function askForKey(reason) {
  if (keyPrompt) return keyPrompt;
  keyPrompt = new Promise((resolve) => {
    const dialog = $("key-dialog");
    const input = $("api-key");
    const problem = $("key-error");
    const listening = new AbortController();
    const finish = (key) => {
      state.keyDeclined = !key;
      listening.abort();
      if (dialog.open) dialog.close();
      keyPrompt = null;
      resolve(key);
    };
    problem.textContent = reason;
    problem.hidden = !reason;
    input.value = "";
    $("key-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const key = input.value.trim();
      if (!key) {
        problem.textContent = "Type the key first.";
        problem.hidden = false;
        input.focus();
        return;
      }
      storeKey(key);
      finish(key);
    }, { signal: listening.signal });
    $("key-cancel").addEventListener("click", () => finish(""), { signal: listening.signal });
    dialog.addEventListener("cancel", () => finish(""), { signal: listening.signal }); // Escape
    dialog.showModal();
    input.focus();
  });
  return keyPrompt;
}

// ---------------------------------------------------------------------------------------------- messages

function announce(text) {
  const region = $("announce");
  region.textContent = "";
  // A new text node after a pause: screen readers announce a message even when it repeats.
  setTimeout(() => { region.textContent = text; }, 50);
}

function showAlert(text, fromConnection = false) {
  const alert = $("alert");
  alert.textContent = text;
  alert.hidden = !text;
  state.alertFromConnection = Boolean(text) && fromConnection;
}

function clearConnectionAlert() {
  if (state.alertFromConnection) showAlert("");
}

function plural(count, one, many = `${one}s`) {
  return `${count} ${count === 1 ? one : many}`;
}

function formatBytes(bytes) {
  if (bytes < 1024) return `${bytes} B`;
  if (bytes < 1048576) return `${(bytes / 1024).toFixed(0)} KB`;
  return `${(bytes / 1048576).toFixed(1)} MB`;
}

// A limit in MB as the server says it (its bytes over 1048576, to six figures: 0.04, not 0.0399999...).
function mbText(mb) {
  return String(Number(Number(mb).toPrecision(6)));
}

// "1.5 seconds", "10 minutes": a duration limit in words.
function durationText(seconds) {
  if (seconds < 120 || seconds % 60) return `${Number(seconds.toFixed(2))} seconds`;
  return seconds % 3600 ? `${seconds / 60} minutes` : plural(seconds / 3600, "hour");
}

function suffixOf(name) {
  const match = /\.[^./\\]+$/.exec(String(name || ""));
  return match ? match[0].toLowerCase() : "";
}

// Whether a file so named is a video to the server: it tells one by its name's suffix, as this does.
function isVideoName(name) {
  return Boolean(state.formats?.videos?.includes(suffixOf(name)));
}

function sizeText(size) {
  return Array.isArray(size) && size.length === 2 ? `${size[0]} × ${size[1]}` : "";
}

function sleep(ms, signal) {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    signal?.addEventListener("abort", () => { clearTimeout(timer); resolve(); }, { once: true });
  });
}

// ---------------------------------------------------------------------------------------------- choosing files

function addFiles(list) {
  const files = Array.from(list || []);
  if (!files.length) return;
  state.files.push(...files);
  renderChosen();
  announce(`${plural(state.files.length, "file")} chosen.`);
}

function renderChosen() {
  const list = $("chosen-list");
  list.replaceChildren();
  for (const file of state.files) {
    const item = document.createElement("li");
    const name = document.createElement("span");
    name.className = "chosen-name";
    name.textContent = file.name || "(unnamed)";
    const size = document.createElement("span");
    size.className = "muted small";
    size.textContent = formatBytes(file.size);
    item.append(name, size);
    list.append(item);
  }
  $("chosen-title").textContent = `${plural(state.files.length, "file")} to restore`;
  $("chosen").hidden = state.files.length === 0;
  $("restore").disabled = state.files.length === 0;
}

// The server checks these too; checking first spares uploading what it would refuse. A video (by its name) has
// its own size limit.
function overLimits(files) {
  const limits = state.limits;
  if (!limits) return "";
  if (files.length > limits.max_files) {
    return `That is ${files.length} files; the server takes at most ${limits.max_files} at a time.`;
  }
  for (const file of files) {
    const video = isVideoName(file.name) && limits.max_video_mb;
    const mb = video ? limits.max_video_mb : limits.max_file_mb;
    if (file.size > mb * 1048576) {
      return `${file.name} is ${formatBytes(file.size)}; the server takes ${video ? "videos" : "files"} of at most `
        + `${mbText(mb)} MB.`;
    }
  }
  return "";
}

// The hint under the drop zone: how many files, how large, which videos, how long.
function describeLimits(limits, formats) {
  const images = `Up to ${plural(limits.max_files, "file")} at a time: images of at most ${mbText(limits.max_file_mb)} MB`;
  const animated = formats?.animated?.length
    ? ` (animated ${formats.animated.join(", ")} are restored frame by frame)` : "";
  if (!formats?.videos?.length) return `${images}${animated}.`;
  const bounds = [`${mbText(limits.max_video_mb ?? limits.max_file_mb)} MB`];
  if (limits.max_video_seconds) bounds.push(durationText(limits.max_video_seconds));
  if (limits.max_video_frames) bounds.push(plural(limits.max_video_frames, "frame"));
  const last = bounds.pop();
  const within = bounds.length ? `${bounds.join(", ")} and ${last}` : last;
  return `${images}${animated}; videos (${formats.videos.join(", ")}) of at most ${within}.`;
}

// What the server takes: the picker offers those files, the hint says the limits.
function applyUploadRules(health) {
  state.limits = health.limits || null;
  state.formats = health.formats || null;
  if (state.formats) {
    $("file-input").accept = [...(state.formats.images || []), ...(state.formats.videos || [])].join(",");
  }
  if (state.limits) $("limits").textContent = describeLimits(state.limits, state.formats);
}

function setupChoosing() {
  const zone = $("drop-zone");
  const input = $("file-input");
  zone.addEventListener("click", () => input.click());
  input.addEventListener("change", () => {
    addFiles(input.files);
    input.value = ""; // choosing the same file again still fires change
  });
  const over = (event) => {
    event.preventDefault();
    if (event.dataTransfer) event.dataTransfer.dropEffect = "copy";
    zone.classList.add("over");
  };
  zone.addEventListener("dragenter", over);
  zone.addEventListener("dragover", over);
  zone.addEventListener("dragleave", (event) => {
    if (!zone.contains(event.relatedTarget)) zone.classList.remove("over");
  });
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("over");
    addFiles(event.dataTransfer?.files);
  });
  // A file dropped beside the zone must not make the browser leave the page to open it.
  for (const type of ["dragover", "drop"]) window.addEventListener(type, (event) => event.preventDefault());
  $("clear-files").addEventListener("click", () => {
    state.files = [];
    renderChosen();
    announce("The list of files is empty.");
    zone.focus();
  });
}

// ---------------------------------------------------------------------------------------------- submitting

async function submit(event) {
  event.preventDefault();
  const files = state.files.slice();
  if (!files.length) return;
  const refused = overLimits(files);
  if (refused) {
    showAlert(refused);
    return;
  }
  const form = new FormData();
  for (const file of files) form.append("files", file, file.name);
  appendFaceChoices(form);
  appendRestoreChoices(form);
  if ($("outscale").value) form.append("outscale", $("outscale").value);
  form.append("format", $("format").value);
  if (!$("model-field").hidden && $("model").value && !$("model").disabled) form.append("model", $("model").value);

  const button = $("restore");
  button.disabled = true;
  button.textContent = "Uploading…";
  showAlert("");
  announce(`Uploading ${plural(files.length, "file")}…`);
  try {
    const accepted = await getJson("enhance", { method: "POST", body: form, interactive: true });
    remember({ id: accepted.job_id, time: Date.now(), files: files.length, status: accepted.status });
    state.files = [];
    showJob(accepted.job_id, files.length);
    $("job-title").focus();
  } catch (error) {
    const text = explain(error, "The upload");
    showAlert(text);
    announce(text);
  } finally {
    button.textContent = "Restore";
    renderChosen();
  }
}

// ---------------------------------------------------------------------------------------------- one job

function closeView() {
  const view = state.view;
  if (!view) return;
  view.controller.abort();
  for (const url of view.urls) URL.revokeObjectURL(url);
  state.view = null;
}

function showJob(id, expectedFiles = 0) {
  closeView();
  const view = { id, controller: new AbortController(), urls: [], cards: new Map(), zip: null, announced: "" };
  state.view = view;
  const section = $("job");
  section.hidden = false;
  section.dataset.status = "queued";
  section.dataset.jobId = id;
  $("job-title").textContent = "Job";
  $("job-id").textContent = `ID ${id}`;
  $("job-state").textContent = "Connecting…";
  $("job-error").hidden = true;
  $("download-zip").hidden = true;
  $("results").replaceChildren();
  setProgress(0, expectedFiles);
  renderRecent();
  follow(view);
}

// ``detail``: what the file in hand is at (a video's frame), after the count of files.
function setProgress(done, total, detail = "") {
  const bar = $("job-progress");
  bar.max = Math.max(total, 1);
  bar.value = done;
  const files = total ? `${done} of ${plural(total, "file")} done` : "Waiting for the server";
  $("job-progress-label").textContent = detail ? `${files} · ${detail}` : files;
}

// A video's frames done and to do, where its entry in the status document says them ({done, total}); else null.
function framesOf(result) {
  const frames = result?.frames;
  const done = Number(frames?.done);
  if (!frames || !Number.isFinite(done)) return null;
  const total = Number(frames.total);
  return { done, total: Number.isFinite(total) && total > 0 ? total : null };
}

function framesText(frames) {
  return frames.total ? `frame ${frames.done} of ${frames.total}` : `frame ${frames.done}`;
}

// Follow the job's events; where the stream cannot be had or breaks off, poll /status every second.
async function follow(view) {
  const { signal } = view.controller;
  try {
    if (await streamEvents(`events/${encodeURIComponent(view.id)}`, signal, (name, doc) => onEvent(view, name, doc))) {
      return;
    }
  } catch (error) {
    if (signal.aborted || stopsFollowing(view, error)) return;
  }
  await poll(view);
}

// A job that is gone (404) or a key that is refused (401) ends the following; other failures are retried.
function stopsFollowing(view, error) {
  if (error instanceof ApiError && error.status === 404) {
    jobGone(view);
    return true;
  }
  if (error instanceof ApiError && error.status === 401) {
    showAlert(explain(error, "Following the job"));
    return true;
  }
  return false;
}

function onEvent(view, name, doc) {
  if (name === "deleted") {
    jobGone(view, "it has been deleted");
    return true;
  }
  if (!doc || typeof doc !== "object" || !Array.isArray(doc.results)) return false;
  render(view, doc);
  return FINAL.has(doc.status);
}

async function poll(view) {
  const { signal } = view.controller;
  while (!signal.aborted) {
    try {
      const doc = await getJson(`status/${encodeURIComponent(view.id)}`, { signal });
      if (signal.aborted) return;
      clearConnectionAlert();
      render(view, doc);
      if (FINAL.has(doc.status)) return;
    } catch (error) {
      if (signal.aborted || stopsFollowing(view, error)) return;
      showAlert("Lost contact with the server; trying again every second.", true);
    }
    await sleep(POLL_MS, signal);
  }
}

// Reads a text/event-stream body with fetch (EventSource cannot send the key header). Calls onEvent(name,
// data) for each event and stops when it returns true; resolves true then, false if the stream just ended.
async function streamEvents(path, signal, onEvent) {
  const response = await request(path, { signal, headers: { Accept: "text/event-stream" } });
  if (!response.body) return false;
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let pending = "";
  let name = "";
  let data = [];
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return false;
      pending += value;
      const lines = pending.split(/\r\n|\r|\n/);
      pending = lines.pop();
      for (const line of lines) {
        if (line === "") { // a blank line ends an event
          if (data.length) {
            let parsed = null;
            try {
              parsed = JSON.parse(data.join("\n"));
            } catch {
              parsed = null;
            }
            if (onEvent(name || "message", parsed)) return true;
          }
          name = "";
          data = [];
        } else if (!line.startsWith(":")) { // ":" starts a comment (the keep-alive)
          const colon = line.indexOf(":");
          const field = colon < 0 ? line : line.slice(0, colon);
          const text = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
          if (field === "event") name = text;
          else if (field === "data") data.push(text);
        }
      }
    }
  } finally {
    reader.cancel().catch(() => {});
  }
}

function jobGone(view, why = "finished jobs are removed after a while") {
  if (state.view !== view) return;
  const section = $("job");
  section.dataset.status = "gone";
  $("job-state").textContent = STATE_TEXT.gone;
  const note = $("job-error");
  note.textContent = `This job is no longer on the server: ${why}.`;
  note.hidden = false;
  $("download-zip").hidden = true;
  updateRecent(view.id, { status: "gone" });
  announce(note.textContent);
}

function render(view, doc) {
  if (state.view !== view) return;
  const section = $("job");
  const status = String(doc.status);
  section.dataset.status = status;
  let stateText = STATE_TEXT[status] || status;
  if (status === "queued" && doc.queue_position) stateText += ` (position ${doc.queue_position} in the queue)`;
  $("job-state").textContent = stateText;
  const done = Number(doc.progress?.done) || 0;
  const total = Number(doc.progress?.total) || doc.results.length;
  const running = doc.results.find((result) => result.status === "processing" && framesOf(result));
  setProgress(done, total, running ? `${running.original_filename}: ${framesText(framesOf(running))}` : "");
  const note = $("job-error");
  note.textContent = doc.error ? (status === "failed" ? `The job failed: ${doc.error}` : `Last try: ${doc.error}`) : "";
  note.hidden = !doc.error;
  $("results").setAttribute("aria-busy", String(!FINAL.has(status)));
  view.zip = doc.download_url || null;
  $("download-zip").hidden = !view.zip;
  for (const result of doc.results) renderResult(view, result);
  updateRecent(view.id, { status, files: doc.results.length });

  const failed = doc.results.filter((result) => result.status === "error").length;
  let message;
  if (status === "completed" || status === "failed") {
    const ok = doc.results.filter((result) => result.status === "ok").length;
    message = `Job ${status}: ${plural(ok, "file")} restored${failed ? `, ${failed} failed` : ""}.`;
  } else if (status === "processing") {
    message = `Processing: ${done} of ${plural(total, "file")} done.`;
  } else {
    message = stateText + ".";
  }
  if (message !== view.announced) {
    view.announced = message;
    announce(message);
  }
}

function renderResult(view, result) {
  let card = view.cards.get(result.index);
  if (!card) {
    card = makeCard(view, result);
    view.cards.set(result.index, card);
    $("results").append(card.root);
  }
  card.result = result;
  // a video keeps its container; asked at each render, as /health's formats may come after the first
  card.root.dataset.kind = isVideoName(result.original_filename) || isVideoName(result.url) ? "video" : "image";
  card.root.dataset.state = result.status;
  card.state.textContent = FILE_TEXT[result.status] || result.status;
  showFrames(card, result.status === "processing" ? framesOf(result) : null);
  const sizes = [sizeText(result.in_size), sizeText(result.out_size)].filter(Boolean);
  card.size.textContent = sizes.length === 2 ? `${sizes[0]} → ${sizes[1]} pixels` : "";
  if (result.status === "error") {
    card.error.textContent = result.error || `${result.original_filename} could not be restored.`;
    card.error.hidden = false;
  } else {
    card.error.hidden = true;
  }
  if (result.status === "ok" && result.url && !card.loading) {
    card.loading = true;
    loadComparison(view, card);
  }
}

// A video's progress on its card: "Restoring… frame 12 of 48" and a bar (without a total: a busy bar).
function showFrames(card, frames) {
  card.frames.hidden = !frames;
  if (!frames) return;
  card.state.textContent = `${FILE_TEXT.processing} ${framesText(frames)}`;
  card.frames.setAttribute("aria-label", `${card.name}: ${framesText(frames)}`);
  if (frames.total) {
    card.frames.max = frames.total;
    card.frames.value = frames.done;
  } else {
    card.frames.removeAttribute("value");
  }
}

function makeCard(view, result) {
  const root = $("result-template").content.firstElementChild.cloneNode(true);
  const name = String(result.original_filename);
  const card = {
    root,
    result,
    state: root.querySelector(".result-state"),
    error: root.querySelector(".result-error"),
    figure: root.querySelector(".compare"),
    frame: root.querySelector(".frame"),
    before: root.querySelector(".before"),
    after: root.querySelector(".after"),
    slider: root.querySelector(".slider"),
    size: root.querySelector(".result-size"),
    note: root.querySelector(".result-note"),
    download: root.querySelector(".download-one"),
    frames: root.querySelector(".result-frames"),
    file: null, // {blob, name}: the result, once fetched
    loading: false,
  };
  root.querySelector(".result-name").textContent = name;
  card.before.alt = `Before: ${name}`;
  card.after.alt = `After: ${name}`;
  card.slider.setAttribute("aria-label", `Before / after: ${name}`);
  card.download.textContent = `Download ${name}`;
  card.download.addEventListener("click", () => downloadResult(view, card));
  attachCompare(card, name);
  attachVideoCompare(card, name);
  return card;
}

async function loadComparison(view, card) {
  if (card.root.dataset.kind === "video") {
    await loadVideoComparison(view, card);
    return;
  }
  const { signal } = view.controller;
  const result = card.result;
  try {
    const [before, after] = await Promise.all([fetchBlob(result.input_url, signal), fetchBlob(result.url, signal)]);
    if (signal.aborted) return;
    card.file = { blob: after.blob, name: after.name || fallbackName(result) };
    card.download.textContent = `Download ${card.file.name}`;
    card.download.hidden = false;
    card.before.src = objectUrl(view, before.blob);
    card.after.src = objectUrl(view, after.blob);
    await Promise.all([card.before.decode(), card.after.decode()]);
    if (signal.aborted) return;
    card.frame.style.aspectRatio = `${card.after.naturalWidth} / ${card.after.naturalHeight}`;
    card.figure.hidden = false;
    setDivider(card); // the frame has its size now
    card.figure.dataset.ready = "true";
  } catch (error) {
    if (signal.aborted) return;
    card.figure.hidden = true;
    card.note.textContent = error instanceof ApiError || error instanceof TypeError
      ? explain(error, "Loading the pictures")
      : "This browser cannot show these pictures (TIFF, for one, it cannot); download the result to see it.";
    card.note.hidden = false;
    if (card.file) card.download.hidden = false;
  }
}

// Where a player reads a file of the job: its URL, which the browser streams (and seeks in) by itself, except
// where the server wants a key, which a player cannot send: then the file is fetched whole into a blob.
async function mediaSource(view, path, signal) {
  if (!memoryKey) return { src: apiUrl(path).href, file: null };
  const fetched = await fetchBlob(path, signal);
  return { src: objectUrl(view, fetched.blob), file: fetched };
}

// A video's result: both players, or where this browser cannot play the restored video, a note and its download.
async function loadVideoComparison(view, card) {
  const { signal } = view.controller;
  const result = card.result;
  try {
    const [before, after] = await Promise.all([mediaSource(view, result.input_url, signal),
                                               mediaSource(view, result.url, signal)]);
    if (signal.aborted) return;
    if (after.file) card.file = { blob: after.file.blob, name: after.file.name || fallbackName(result) };
    const name = card.file?.name || fallbackName(result);
    card.download.textContent = `Download ${name}`;
    card.download.hidden = false;
    const shown = await loadVideos(card, before.src, after.src);
    if (signal.aborted) return;
    const notes = {
      none: `This browser cannot play ${name} (its container or codec); download it to watch it in a video player.`,
      after: "This browser cannot play the uploaded video, so the restored one is shown alone.",
    };
    card.note.textContent = notes[shown] || "";
    card.note.hidden = !notes[shown];
  } catch (error) {
    if (signal.aborted) return;
    card.note.textContent = explain(error, "Loading the videos");
    card.note.hidden = false;
  }
}

function objectUrl(view, blob) {
  const url = URL.createObjectURL(blob);
  view.urls.push(url);
  return url;
}

// The name the server offers a result under is its input's stem with the output's suffix (a URL without one:
// the input's); this is it, for when the header is missing.
function fallbackName(result) {
  const original = String(result.original_filename).split(/[/\\]/).pop() || "image";
  const dot = original.lastIndexOf(".");
  const stem = dot > 0 ? original.slice(0, dot) : original;
  const suffix = /\.[A-Za-z0-9]+$/.exec(String(result.url || ""));
  return stem + (suffix ? suffix[0] : dot > 0 ? original.slice(dot) : "");
}

async function downloadResult(view, card) {
  try {
    if (!card.file) {
      const fetched = await fetchBlob(card.result.url, view.controller.signal, true);
      card.file = { blob: fetched.blob, name: fetched.name || fallbackName(card.result) };
    }
    saveBlob(card.file.blob, card.file.name);
  } catch (error) {
    const text = explain(error, "The download");
    if (text) showAlert(text);
  }
}

async function downloadZip() {
  const view = state.view;
  if (!view || !view.zip) return;
  const fallback = `restorecli-${view.id}.zip`;
  if (!memoryKey) {
    // No key to send: the browser can stream the archive straight to disk, named by the server's header.
    clickLink(apiUrl(view.zip).href, "");
    announce("Downloading the ZIP archive.");
    return;
  }
  const button = $("download-zip");
  button.disabled = true;
  announce("Preparing the ZIP archive…");
  try {
    const fetched = await fetchBlob(view.zip, view.controller.signal, true);
    saveBlob(fetched.blob, fetched.name || fallback);
    announce("Downloading the ZIP archive.");
  } catch (error) {
    const text = explain(error, "The ZIP download");
    if (text) showAlert(text);
  } finally {
    button.disabled = false;
  }
}

function saveBlob(blob, name) {
  const url = URL.createObjectURL(blob);
  clickLink(url, name);
  setTimeout(() => URL.revokeObjectURL(url), 60000); // the browser reads it after the click returns
}

function clickLink(href, name) {
  const link = document.createElement("a");
  link.href = href;
  link.download = name;
  link.hidden = true;
  document.body.append(link);
  link.click();
  link.remove();
}

// ---------------------------------------------------------------------------------------------- recent jobs

function loadRecent() {
  try {
    const list = JSON.parse(localStorage.getItem(RECENT_STORE) || "[]");
    return Array.isArray(list)
      ? list.filter((entry) => entry && typeof entry.id === "string" && /^[\w-]{1,100}$/.test(entry.id))
      : [];
  } catch {
    return [];
  }
}

function saveRecent(list) {
  try {
    localStorage.setItem(RECENT_STORE, JSON.stringify(list.slice(0, RECENT_MAX)));
  } catch {
    // storage full or refused: the list is only this page's
  }
}

function remember(entry) {
  saveRecent([entry, ...loadRecent().filter((other) => other.id !== entry.id)]);
  renderRecent();
}

function updateRecent(id, changes) {
  const list = loadRecent();
  const entry = list.find((other) => other.id === id);
  if (!entry || Object.entries(changes).every(([key, value]) => entry[key] === value)) return;
  Object.assign(entry, changes);
  saveRecent(list);
  renderRecent();
}

function forget(id) {
  saveRecent(loadRecent().filter((entry) => entry.id !== id));
  renderRecent();
  announce("Job forgotten in this browser. Its files stay on the server until it removes them.");
}

function renderRecent() {
  const list = loadRecent();
  const shown = state.view?.id;
  const items = list.map((entry) => {
    const when = new Date(Number(entry.time) || 0).toLocaleString();
    const files = plural(Number(entry.files) || 0, "file");
    const status = STATE_TEXT[entry.status] || String(entry.status || "unknown");
    const item = document.createElement("li");
    item.className = "recent-item";
    item.dataset.jobId = entry.id;
    const open = document.createElement("button");
    open.type = "button";
    open.className = "recent-open";
    if (entry.id === shown) open.setAttribute("aria-current", "true");
    const title = document.createElement("span");
    title.className = "recent-when";
    title.textContent = when;
    const detail = document.createElement("span");
    detail.className = "muted small";
    detail.textContent = `${files} · ${status}`;
    open.append(title, detail);
    open.setAttribute("aria-label", `Show the job from ${when}: ${files}, ${status}`);
    open.addEventListener("click", () => {
      showJob(entry.id, Number(entry.files) || 0);
      $("job-title").focus();
    });
    const drop = document.createElement("button");
    drop.type = "button";
    drop.className = "quiet recent-forget";
    drop.textContent = "Forget";
    drop.setAttribute("aria-label", `Forget the job from ${when}`);
    drop.addEventListener("click", () => {
      forget(entry.id);
      $("recent-title").focus();
    });
    item.append(open, drop);
    return item;
  });
  $("recent-list").replaceChildren(...items);
  $("recent-empty").hidden = items.length > 0;
}

// Jobs left unfinished when the page was last open: ask how they are now.
async function refreshRecent() {
  for (const entry of loadRecent()) {
    if (FINAL.has(entry.status) || entry.status === "gone" || entry.id === state.view?.id) continue;
    try {
      const doc = await getJson(`status/${encodeURIComponent(entry.id)}`);
      updateRecent(entry.id, { status: doc.status });
    } catch (error) {
      if (error instanceof ApiError && error.status === 404) updateRecent(entry.id, { status: "gone" });
      else return; // the server is away or wants a key: leave the list as it was
    }
  }
}

// ---------------------------------------------------------------------------------------------- start

function describeServer(health) {
  const workers = health.workers || {};
  const queue = health.queue || {};
  const busy = [queue.queued ? `${queue.queued} queued` : "", queue.processing ? `${queue.processing} processing` : ""]
    .filter(Boolean).join(", ");
  const alive = health.worker_alive
    ? `Ready: ${plural(Math.max(workers.alive || 0, workers.seen || 0), "worker")}`
    : "No worker is running: jobs wait in the queue until one starts";
  return busy ? `${alive} (${busy}).` : `${alive}.`;
}

function applyModels(models) {
  const defaults = models.defaults || {};
  const format = $("format");
  if ([...format.options].some((option) => option.value === defaults.format)) format.value = defaults.format;

  const scale = $("outscale-default");
  const modelScale = (models.models || []).find((model) => model.name === models.default)?.scale;
  if (defaults.outscale) scale.textContent = `${defaults.outscale}× (server default)`;
  else if (modelScale) scale.textContent = `Model's, ${modelScale}× (server default)`;
  else scale.textContent = "Model's scale (server default)";

  const choices = models.models || [];
  const select = $("model");
  select.replaceChildren(...choices.map((model) => {
    const option = document.createElement("option");
    option.value = model.name;
    option.textContent = model.scale ? `${model.name} (${model.scale}×)` : model.name;
    option.selected = model.name === models.default;
    return option;
  }));
  $("model-field").hidden = choices.length < 2;

  applyFaceChoices(models);
  applyRestoreChoices(models);
}

async function start() {
  setupChoosing();
  setupRestoreChoices();
  $("upload-form").addEventListener("submit", submit);
  $("download-zip").addEventListener("click", downloadZip);
  $("key-button").addEventListener("click", async () => {
    if (await askForKey("")) {
      showAlert("");
      loadModels();
    }
  });
  renderChosen();
  renderRecent();

  try {
    const health = await healthDocument();
    applyUploadRules(health);
    state.authRequired = Boolean(health.auth_required);
    $("server-state").textContent = describeServer(health);
    $("key-button").hidden = !state.authRequired;
    if (state.authRequired && !memoryKey) await askForKey("");
  } catch (error) {
    $("server-state").textContent = "The server cannot be reached.";
    showAlert(explain(error, "Connecting"), true);
  }
  await loadModels();
  await refreshRecent();
  document.body.dataset.ready = "true";
}

async function loadModels() {
  try {
    applyModels(await getJson("models"));
    clearConnectionAlert();
  } catch (error) {
    $("face-hint").textContent = "Whether faces can be restored is not known yet.";
    showAlert(explain(error, "Asking the server what it can run"), error instanceof TypeError);
  }
}

start();
