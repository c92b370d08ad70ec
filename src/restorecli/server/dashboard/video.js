// The before/after view of a restored video: the uploaded video beside the restored one, the input following
// the result's play, pause, seek and speed so that both show the same moment. The restored video has the
// browser's own controls (keyboard reachable); "Play both" plays or pauses the pair, and "Input beside it" shows
// or hides the input. A video this browser cannot play is reported by ``loadVideos`` instead of left as a broken
// player, so that the card can offer its download.

const DRIFT = 0.25; // seconds the input may stray from the result while both play before it is put back

// Wire the video view of ``card`` (its root, as app.js's makeCard finds it), named ``name`` in the labels.
export function attachVideoCompare(card, name) {
  const root = card.root;
  const video = {
    figure: root.querySelector(".video-compare"),
    before: root.querySelector(".video-before"),
    after: root.querySelector(".video-after"),
    beforeSide: root.querySelector(".video-side-before"),
    play: root.querySelector(".video-play"),
    beside: root.querySelector(".video-beside"),
    size: root.querySelector(".video-size"),
  };
  card.video = video;
  video.before.setAttribute("aria-label", `Before: ${name}`);
  video.after.setAttribute("aria-label", `After: ${name}`);
  video.play.setAttribute("aria-label", `Play both: ${name}`);
  video.beside.setAttribute("aria-label", `Input beside it: ${name}`);
  video.play.addEventListener("click", () => {
    if (video.after.paused) video.after.play().catch(() => {});
    else video.after.pause();
  });
  video.beside.addEventListener("click", () => showBeside(video, video.beside.getAttribute("aria-pressed") !== "true"));
  followResult(video, name);
}

// The input does what the result does: the result's controls (or the pair's button) drive both.
function followResult(video, name) {
  const { before, after } = video;
  const align = (tolerance) => {
    if (before.readyState > 0 && Math.abs(before.currentTime - after.currentTime) > tolerance) {
      before.currentTime = after.currentTime;
    }
  };
  const label = () => {
    const word = after.paused ? "Play" : "Pause";
    video.play.textContent = `${word} both`;
    video.play.setAttribute("aria-label", `${word} both: ${name}`);
  };
  after.addEventListener("play", () => {
    align(0);
    before.play().catch(() => {}); // an input that cannot play leaves the result playing alone
    label();
  });
  after.addEventListener("pause", () => {
    before.pause();
    align(0);
    label();
  });
  after.addEventListener("seeking", () => align(0));
  after.addEventListener("ratechange", () => { before.playbackRate = after.playbackRate; });
  after.addEventListener("timeupdate", () => { if (!after.paused) align(DRIFT); });
  after.addEventListener("ended", () => before.pause());
}

function showBeside(video, shown) {
  video.beside.setAttribute("aria-pressed", String(shown));
  video.beside.textContent = shown ? "Input beside it" : "Restored only";
  video.beforeSide.hidden = !shown;
  video.figure.dataset.beside = String(shown);
}

// Resolves once ``element`` has its first frame, rejects where the browser cannot play ``src``.
function loaded(element, src) {
  return new Promise((resolve, reject) => {
    const done = new AbortController();
    element.addEventListener("loadeddata", () => { done.abort(); resolve(); }, { signal: done.signal });
    element.addEventListener("error", () => {
      done.abort();
      reject(new Error(element.error?.message || "unplayable"));
    }, { signal: done.signal });
    element.src = src;
    element.load();
  });
}

// Load the input (``beforeSrc``) and the result (``afterSrc``) into the card's players. Resolves with "both",
// "after" (the input cannot be played here: the result is shown alone) or "none" (the result cannot be played
// here: the view stays hidden).
export async function loadVideos(card, beforeSrc, afterSrc) {
  const video = card.video;
  const [before, after] = await Promise.allSettled([loaded(video.before, beforeSrc), loaded(video.after, afterSrc)]);
  if (after.status === "rejected") {
    video.after.removeAttribute("src");
    video.before.removeAttribute("src");
    return "none";
  }
  const pair = before.status === "fulfilled";
  showBeside(video, pair);
  video.beside.hidden = !pair;
  video.play.hidden = !pair; // alone, the result's own controls are the player
  if (!pair) video.before.removeAttribute("src");
  const { videoWidth, videoHeight, duration } = video.after;
  const pixels = card.size.textContent || `${videoWidth} × ${videoHeight} pixels`; // "in → out pixels", if known
  video.size.textContent = `${pixels}, ${duration.toFixed(2)} seconds`;
  video.figure.hidden = false;
  video.figure.dataset.ready = "true";
  return pair ? "both" : "after";
}
