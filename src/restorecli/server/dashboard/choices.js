// The choices of the upload form that GET /models decides: whether faces can be restored, the face models this
// server offers (only those it can run), the fidelity slider (only for a face model that takes one), the presets
// whose models the server offers, and colourising where the server can. Strings from the server are only ever
// set as textContent.

const $ = (id) => document.getElementById(id);

let offered = []; // the runnable face models of GET /models, each {name, licence, non_commercial, fidelity, ...}

// Fill the face fields from the models document.
export function applyFaceChoices(models) {
  const faces = models.faces || {};
  const defaults = models.defaults || {};
  offered = (faces.models || []).filter((face) => face && face.runnable);
  const detector = faces.detector_installed ?? faces.available;
  const usable = Boolean(detector && (offered.length || faces.available));
  const face = $("face-enhance");
  face.disabled = !usable;
  face.checked = usable && Boolean(defaults.face_enhance);
  const select = $("face-model");
  select.replaceChildren(...offered.map((model) => {
    const option = document.createElement("option");
    option.value = model.name;
    option.textContent = model.non_commercial ? `${model.name} (non-commercial licence)` : model.name;
    option.selected = model.name === (defaults.face_model ?? faces.model);
    return option;
  }));
  if (typeof defaults.face_fidelity === "number") $("face-fidelity").value = String(defaults.face_fidelity);
  $("face-hint").textContent = usable
    ? "Finds faces and restores them with the face model chosen below."
    : `Not available on this server: its face models (${faces.model}, ${faces.detector}) are not installed.`;
  showFaceFields();
}

// The face model and fidelity fields, shown while faces are to be restored (fidelity: for a model taking one).
export function showFaceFields() {
  const face = $("face-enhance");
  const on = face.checked && !face.disabled && offered.length > 0;
  const chosen = offered.find((model) => model.name === $("face-model").value);
  $("face-model-field").hidden = !on;
  $("fidelity-field").hidden = !(on && chosen && chosen.fidelity === true);
  $("fidelity-value").textContent = $("face-fidelity").value;
  const licence = chosen && chosen.licence ? ` Licence: ${chosen.licence}.` : "";
  $("face-model-hint").textContent = chosen ? `${chosen.description}${licence}` : "";
}

// Add the face fields to an upload's form: face_enhance always, the model and fidelity where they apply.
export function appendFaceChoices(form) {
  const face = $("face-enhance");
  const on = face.checked && !face.disabled;
  form.append("face_enhance", on ? "true" : "false");
  if (!on || $("face-model-field").hidden) return;
  form.append("face_model", $("face-model").value);
  if (!$("fidelity-field").hidden) form.append("face_fidelity", $("face-fidelity").value);
}

export function setupFaceChoices() {
  for (const id of ["face-enhance", "face-model", "face-fidelity"]) {
    $(id).addEventListener("input", showFaceFields);
    $(id).addEventListener("change", showFaceFields);
  }
}

let presets = []; // GET /models' presets: each {name, description, models, face_enhance}

// Fill the preset and colourise fields from the models document; each is shown only where the server offers it.
export function applyRestoreChoices(models) {
  const defaults = models.defaults || {};
  presets = Array.isArray(models.presets) ? models.presets : [];
  const select = $("preset");
  select.replaceChildren(select.options[0], ...presets.map((preset) => {
    const option = document.createElement("option");
    option.value = preset.name;
    option.textContent = preset.name;
    option.selected = preset.name === defaults.preset;
    return option;
  }));
  $("preset-field").hidden = presets.length === 0;
  const colorize = models.colorize || {};
  $("colorize-field").hidden = !colorize.available;
  $("colorize").value = colorize.available && defaults.colorize ? defaults.colorize : "never";
  $("colorize-hint").textContent = colorize.available
    ? `With ${colorize.model}: the colours from the model, the detail from the restored image.` : "";
  showPreset();
}

// A preset chooses the models itself: the model field is set aside while one is chosen.
function showPreset() {
  const chosen = presets.find((preset) => preset.name === $("preset").value);
  $("model").disabled = Boolean(chosen);
  const faces = chosen && chosen.face_enhance ? " Faces are restored too." : "";
  $("preset-hint").textContent = chosen ? `${chosen.description} Runs ${chosen.models.join(", then ")}.${faces}` : "";
}

// Add the preset and colourise fields to an upload's form, where they are offered and chosen.
export function appendRestoreChoices(form) {
  if (!$("preset-field").hidden && $("preset").value) form.append("preset", $("preset").value);
  if (!$("colorize-field").hidden) form.append("colorize", $("colorize").value);
}

export function setupRestoreChoices() {
  setupFaceChoices();
  $("preset").addEventListener("change", showPreset);
}
