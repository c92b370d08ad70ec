// The before/after compare of one result: the divider (the slider), and zoom and pan over both pictures alike,
// by the buttons, the mouse wheel, dragging, or the keyboard on the focused picture, up to 1:1 pixels and beyond;
// "Enlarge" makes the compare fill the window (Escape gives it back).
//
// Both pictures get the same transform (translate, then scale, from the frame's top left corner). The "after"
// picture's clip is set in its own coordinates so that its edge stays on the divider, which is the frame's.

const MAX_SCALE = 32;
const STEP = 1.5; // one press of a zoom button or key
const WHEEL_STEP = 1.2;
const PAN_SHARE = 0.1; // an arrow key pans a tenth of the frame

// Wire the compare of ``card`` (its root, frame, pictures and slider, as app.js's makeCard finds them), named
// ``name`` in the controls' labels.
export function attachCompare(card, name) {
  const root = card.root;
  card.name = name;
  card.zoom = { scale: 1, x: 0, y: 0 };
  card.zoomLevel = root.querySelector(".zoom-level");
  card.enlarge = root.querySelector(".zoom-enlarge");
  const buttons = {
    ".zoom-in": [`Zoom in: ${name}`, () => zoomBy(card, STEP)],
    ".zoom-out": [`Zoom out: ${name}`, () => zoomBy(card, 1 / STEP)],
    ".zoom-actual": [`Actual pixels (1:1): ${name}`, () => zoomTo(card, actualScale(card))],
    ".zoom-reset": [`Reset the zoom: ${name}`, () => setZoom(card, 1, 0, 0)],
    ".zoom-enlarge": [`Enlarge: ${name}`, () => setEnlarged(card, !card.figure.classList.contains("enlarged"))],
  };
  for (const [selector, [label, action]] of Object.entries(buttons)) {
    const button = root.querySelector(selector);
    button.setAttribute("aria-label", label);
    button.addEventListener("click", action);
  }
  card.frame.setAttribute("aria-label", `${name}, before and after: + and - zoom, the arrow keys pan, 0 resets`);
  card.slider.addEventListener("input", () => setDivider(card));
  card.frame.addEventListener("wheel", (event) => onWheel(card, event), { passive: false });
  card.frame.addEventListener("keydown", (event) => onKey(card, event));
  card.figure.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && card.figure.classList.contains("enlarged")) setEnlarged(card, false);
  });
  attachDrag(card);
  setDivider(card);
}

// The "after" picture covers the "before" one right of the divider: at 0 it is all after, at 100 all before.
export function setDivider(card) {
  const at = Number(card.slider.value);
  const width = card.frame.clientWidth || 1;
  const { scale, x } = card.zoom;
  const local = ((at / 100) * width - x) / scale / width; // the divider, in the untransformed picture's share
  const inset = Math.min(100, Math.max(0, Number((local * 100).toFixed(4))));
  card.after.style.clipPath = `inset(0 0 0 ${inset}%)`;
  card.frame.style.setProperty("--divider", `${at}%`);
  card.slider.setAttribute("aria-valuetext", `${at}% before, ${100 - at}% after`);
}

// The zoom at which one pixel of the result is one pixel of the screen: the pictures are fitted ("contain")
// into the frame at scale 1.
function actualScale(card) {
  const { naturalWidth, naturalHeight } = card.after;
  const fitted = Math.min(card.frame.clientWidth / naturalWidth, card.frame.clientHeight / naturalHeight);
  return naturalWidth && naturalHeight && fitted ? 1 / fitted : 1;
}

function zoomBy(card, factor, at = null) {
  zoomTo(card, card.zoom.scale * factor, at);
}

// Zoom to ``scale`` keeping the point ``at`` ({x, y} in the frame; its centre by default) where it is. The
// pictures may shrink below the frame's fit only as far as 1:1 (a small picture shown at its own pixels).
function zoomTo(card, scale, at = null) {
  const next = Math.min(MAX_SCALE, Math.max(Math.min(1, actualScale(card)), scale));
  const point = at || { x: card.frame.clientWidth / 2, y: card.frame.clientHeight / 2 };
  const ratio = next / card.zoom.scale;
  setZoom(card, next, point.x - (point.x - card.zoom.x) * ratio, point.y - (point.y - card.zoom.y) * ratio);
}

// Apply a zoom, the pan kept so that the pictures always cover the frame (or, smaller than it, stay centred).
function setZoom(card, scale, x, y) {
  const width = card.frame.clientWidth;
  const height = card.frame.clientHeight;
  const clamp = (value, size) => (scale <= 1 ? (size - size * scale) / 2
    : Math.min(0, Math.max(size - size * scale, value)));
  card.zoom = { scale, x: clamp(x, width), y: clamp(y, height) };
  const transform = `translate(${card.zoom.x}px, ${card.zoom.y}px) scale(${scale})`;
  card.before.style.transform = transform;
  card.after.style.transform = transform;
  card.frame.dataset.zoomed = String(scale > 1);
  card.zoomLevel.textContent = `${Math.round(scale * 100)}%`;
  setDivider(card);
}

function onWheel(card, event) {
  event.preventDefault();
  const box = card.frame.getBoundingClientRect();
  const at = { x: event.clientX - box.left, y: event.clientY - box.top };
  zoomBy(card, event.deltaY < 0 ? WHEEL_STEP : 1 / WHEEL_STEP, at);
}

function onKey(card, event) {
  const width = card.frame.clientWidth * PAN_SHARE;
  const height = card.frame.clientHeight * PAN_SHARE;
  const pans = { ArrowLeft: [width, 0], ArrowRight: [-width, 0], ArrowUp: [0, height], ArrowDown: [0, -height] };
  const { scale, x, y } = card.zoom;
  if (event.key === "+" || event.key === "=") zoomBy(card, STEP);
  else if (event.key === "-" || event.key === "_") zoomBy(card, 1 / STEP);
  else if (event.key === "0") setZoom(card, 1, 0, 0);
  else if (event.key === "1") zoomTo(card, actualScale(card));
  else if (pans[event.key]) setZoom(card, scale, x + pans[event.key][0], y + pans[event.key][1]);
  else return;
  event.preventDefault();
}

// Dragging the frame with a mouse, pen or finger pans both pictures.
function attachDrag(card) {
  let from = null;
  card.frame.addEventListener("pointerdown", (event) => {
    if (event.button !== 0) return;
    from = { pointer: event.pointerId, x: event.clientX, y: event.clientY, zoom: { ...card.zoom } };
    card.frame.setPointerCapture(event.pointerId);
    card.frame.dataset.dragging = "true";
  });
  card.frame.addEventListener("pointermove", (event) => {
    if (!from || event.pointerId !== from.pointer) return;
    setZoom(card, from.zoom.scale, from.zoom.x + event.clientX - from.x, from.zoom.y + event.clientY - from.y);
  });
  const end = (event) => {
    if (!from || event.pointerId !== from.pointer) return;
    from = null;
    delete card.frame.dataset.dragging;
  };
  card.frame.addEventListener("pointerup", end);
  card.frame.addEventListener("pointercancel", end);
}

// The compare filling the window, or back in its card; the zoom starts anew, as the frame's size changed.
function setEnlarged(card, enlarged) {
  card.figure.classList.toggle("enlarged", enlarged);
  card.enlarge.textContent = enlarged ? "Close" : "Enlarge";
  card.enlarge.setAttribute("aria-label", `${enlarged ? "Close the enlarged view" : "Enlarge"}: ${card.name}`);
  card.enlarge.setAttribute("aria-pressed", String(enlarged));
  setZoom(card, 1, 0, 0);
  card.frame.focus();
}
