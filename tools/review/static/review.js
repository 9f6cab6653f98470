// The review page: OpenSeadragon over the slide's Deep Zoom tiles, the cells in view drawn on a canvas above it,
// the gallery beside it, and the decisions (keys or buttons) posted to the server as they are made.
"use strict";
const body = document.body;
const api = body.dataset.api;
const SELECTED = "#ffd600";
const state = {info: null, view: null, selected: null, galleryIndex: -1, minP: 0, hidden: new Set(), decisions: {}};
window.review = state;  // for the browser tests and the curious

async function getJSON(url, options) {
  const response = await fetch(url, options);
  if (!response.ok) throw new Error(await response.text());
  return response.json();
}

function colour(classIndex, alpha) {
  const names = state.info.classes.concat(["rejected"]);
  const rgb = state.info.colours[names[classIndex]] || [0, 200, 0];
  return `rgba(${rgb[0]},${rgb[1]},${rgb[2]},${alpha === undefined ? 1 : alpha})`;
}

// ------------------------------------------------------------------ the viewer and the cells over it
function openViewer() {
  const dzi = state.info.dzi;
  const viewer = OpenSeadragon({
    element: document.getElementById("viewer"), prefixUrl: body.dataset.osdImages, showNavigator: true,
    maxZoomPixelRatio: 4, animationTime: 0.5, gestureSettingsMouse: {clickToZoom: false},
    tileSources: {width: dzi.width, height: dzi.height, tileSize: dzi.tileSize, tileOverlap: dzi.overlap,
                  minLevel: 0, maxLevel: dzi.levels - 1,
                  getTileUrl: (level, x, y) => `${api}/tiles/${level}/${x}_${y}.jpeg`}});
  state.viewer = viewer;
  const canvas = document.createElement("canvas");
  canvas.id = "cells-layer";
  canvas.style.cssText = "position:absolute;left:0;top:0;pointer-events:none;z-index:2";
  viewer.element.appendChild(canvas);
  state.canvas = canvas;
  viewer.addHandler("update-viewport", draw);
  viewer.addHandler("animation-finish", fetchCells);
  viewer.addHandler("open", () => { state.opened = true; fetchCells(); });
  viewer.addHandler("canvas-click", (event) => {
    if (!event.quick) return;
    event.preventDefaultAction = true;
    const point = viewer.viewport.viewerElementToImageCoordinates(event.position);
    const id = cellAt(point.x, point.y, 12 / imageScale());
    if (id !== null) select(id, false);
  });
}

function imageScale() {  // screen px per slide px
  const viewport = state.viewer.viewport;
  return viewport.viewportToImageZoom(viewport.getZoom(true));
}

let fetchTimer = null, fetchSerial = 0;
function fetchCells() {
  clearTimeout(fetchTimer);
  fetchTimer = setTimeout(async () => {
    const viewport = state.viewer.viewport;
    const rect = viewport.viewportToImageRectangle(viewport.getBounds());
    const shown = state.info.classes.concat(["rejected"]).map((_, i) => i).filter((i) => !state.hidden.has(i));
    const query = new URLSearchParams({x0: rect.x, y0: rect.y, x1: rect.x + rect.width, y1: rect.y + rect.height,
                                       scale: imageScale(), min_p: state.minP, classes: shown.join(",")});
    const serial = ++fetchSerial;
    const view = await getJSON(`${api}/cells?${query}`);
    if (serial !== fetchSerial) return;  // a newer view was asked for meanwhile
    state.view = view;
    document.getElementById("view-note").textContent = `${view.total} cells in view, drawn as ${view.mode}`;
    draw();
  }, 120);
}

function draw() {
  const viewer = state.viewer, canvas = state.canvas;
  const width = viewer.element.clientWidth, height = viewer.element.clientHeight, ratio = window.devicePixelRatio || 1;
  if (canvas.width !== width * ratio || canvas.height !== height * ratio) {
    canvas.width = width * ratio; canvas.height = height * ratio;
    canvas.style.width = width + "px"; canvas.style.height = height + "px";
  }
  const ctx = canvas.getContext("2d");
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  ctx.clearRect(0, 0, width, height);
  const view = state.view;
  if (!view) return;
  const origin = viewer.viewport.imageToViewerElementCoordinates(new OpenSeadragon.Point(0, 0));
  const unit = viewer.viewport.imageToViewerElementCoordinates(new OpenSeadragon.Point(1, 0)).x - origin.x;
  const sx = (x) => origin.x + x * unit, sy = (y) => origin.y + y * unit;
  if (view.mode === "outlines") {
    for (const cell of view.cells) {
      ctx.beginPath();
      cell.ring.forEach(([x, y], i) => (i ? ctx.lineTo(sx(x), sy(y)) : ctx.moveTo(sx(x), sy(y))));
      ctx.closePath();
      ctx.setLineDash(cell.d === 2 ? [4, 3] : []);
      if (cell.id === state.selected) {  // a yellow halo around the class colour: the colour stays readable
        ctx.lineWidth = 7; ctx.strokeStyle = SELECTED; ctx.stroke();
      }
      ctx.lineWidth = cell.d ? 2.5 : 1.5;
      ctx.strokeStyle = colour(cell.c);
      ctx.stroke();
    }
    ctx.setLineDash([]);
  } else if (view.mode === "dots") {
    view.x.forEach((x, i) => {
      ctx.fillStyle = view.id[i] === state.selected ? SELECTED : colour(view.c[i], 0.85);
      ctx.beginPath(); ctx.arc(sx(x), sy(view.y[i]), view.id[i] === state.selected ? 5 : 3, 0, 2 * Math.PI); ctx.fill();
    });
  } else {
    const [x0, y0, x1, y1] = view.box, step = (x1 - x0) / view.bins, stepY = (y1 - y0) / view.bins;
    const most = Math.max(1, ...view.counts.flat());
    view.counts.forEach((line, r) => line.forEach((count, c) => {
      if (!count) return;
      const abnormal = view.abnormal[r][c] / count;
      ctx.fillStyle = `rgba(${Math.round(40 + 200 * abnormal)},60,${Math.round(200 - 160 * abnormal)},${0.15 + 0.6 * count / most})`;
      ctx.fillRect(sx(x0 + c * step), sy(y0 + r * stepY), step * unit + 0.5, stepY * unit + 0.5);
    }));
  }
}

function cellAt(x, y, radius) {  // the drawn cell under (or nearest to) a slide point
  const view = state.view;
  if (!view || view.mode === "density") return null;
  let best = null, bestDistance = radius;
  const cells = view.mode === "outlines" ? view.cells : view.id.map((id, i) => ({id, x: view.x[i], y: view.y[i]}));
  for (const cell of cells) {
    if (cell.ring && inside(cell.ring, x, y)) return cell.id;
    const distance = Math.hypot(cell.x - x, cell.y - y);
    if (distance < bestDistance) { best = cell.id; bestDistance = distance; }
  }
  return best;
}

function inside(ring, x, y) {
  let hit = false;
  for (let i = 0, j = ring.length - 1; i < ring.length; j = i++) {
    const [xi, yi] = ring[i], [xj, yj] = ring[j];
    if ((yi > y) !== (yj > y) && x < ((xj - xi) * (y - yi)) / (yj - yi) + xi) hit = !hit;
  }
  return hit;
}

// ------------------------------------------------------------------ the gallery, one cell, the decisions
function renderGallery() {
  const gallery = document.getElementById("gallery");
  gallery.innerHTML = "";
  state.info.gallery.forEach((cell, rank) => {
    const card = document.createElement("div");
    card.className = "card";
    card.dataset.id = cell.id;
    card.innerHTML = `<img src="${api}/crop/${cell.id}.jpeg" alt="cell ${cell.id}" loading="lazy">` +
      `<b>${rank + 1}.</b> <span class="label"></span> p=${cell.abnormal_probability.toFixed(3)}`;
    card.addEventListener("click", () => { state.galleryIndex = rank; select(cell.id, true); });
    gallery.appendChild(card);
  });
  labelGallery();
}

function labelGallery() {
  document.querySelectorAll(".card").forEach((card) => {
    const cell = state.info.gallery.find((c) => String(c.id) === card.dataset.id);
    const decision = state.decisions[card.dataset.id];
    const label = card.querySelector(".label");
    label.textContent = decision ? `${decision.decision}: ${decision.class || "rejected"}` : cell.class;
    label.className = "label" + (decision ? " decided" : "");
    card.classList.toggle("selected", Number(card.dataset.id) === state.selected);
  });
}

async function select(id, fly) {
  state.selected = id;
  labelGallery();
  const cell = await getJSON(`${api}/cell/${id}`);
  const v = cell.values;
  if (fly) {
    const [x0, y0, x1, y1] = ["x0", "y0", "x1", "y1"].map((k) => Number(v[k]));
    const pad = Math.max(x1 - x0, y1 - y0, 40) * 2.5;  // the cell among its neighbours
    const rect = state.viewer.viewport.imageToViewportRectangle(x0 - pad, y0 - pad, x1 - x0 + 2 * pad, y1 - y0 + 2 * pad);
    state.viewer.viewport.fitBounds(rect);
    const card = document.querySelector(`.card[data-id="${id}"]`);
    if (card) card.scrollIntoView({block: "nearest"});
  }
  showCell(cell);
  draw();
}

function showCell(cell) {
  const v = cell.values, names = state.info.classes;
  const rows = Object.entries(v).filter(([k]) => !["field", "id"].includes(k))
    .map(([k, value]) => `<tr><th>${k}</th><td>${isNaN(Number(value)) || value === "" ? value : Number(value).toFixed(3).replace(/\.?0+$/, "")}</td></tr>`);
  const decided = cell.decision ? `<span class="decision">${cell.decision.decision}${cell.decision.class ? ": " + cell.decision.class : ""}</span>` : "not reviewed";
  const buttons = [`<button data-d="accept">accept (a)</button>`, `<button data-d="reject">reject (r)</button>`,
    ...names.map((name, i) => `<button data-d="relabel" data-c="${name}">${i + 1}: ${name}</button>`),
    `<button data-d="clear">undo (u)</button>`].join("");
  document.getElementById("cell").innerHTML = `<h2>Cell ${cell.id}</h2><p>model: <b>${v["class"]}</b> &middot; ` +
    `review: <span id="cell-decision">${decided}</span></p><div>${buttons}</div><table>${rows.join("")}</table>`;
  document.querySelectorAll("#cell button").forEach((b) => b.addEventListener("click", () => decide(b.dataset.d, b.dataset.c)));
}

async function decide(decision, className) {
  if (state.selected === null) return;
  const review = await getJSON(`${api}/decision`, {method: "POST", headers: {"Content-Type": "application/json"},
    body: JSON.stringify({cell: state.selected, decision, class: className})});
  applyReview(review);
  showCell(await getJSON(`${api}/cell/${state.selected}`));
  fetchCells();
}

function applyReview(review) {
  state.decisions = review.decisions;
  const model = review.model, reviewed = review.reviewed;
  document.getElementById("calls").innerHTML = `model: <span class="call call-${model.call.replace(" ", "-")}">${model.call}</span> ` +
    `reviewed: <span id="reviewed-call" class="call call-${reviewed.call.replace(" ", "-")}">${reviewed.call}</span> ` +
    `<span class="muted">${reviewed.reviewed} reviewed, ${reviewed.rejected} rejected</span>`;
  const rows = state.info.classes.map((name) => `<tr><td><span class="swatch" style="background:${colour(state.info.classes.indexOf(name))}"></span>${name}</td>` +
    `<td>${(model.counts || {})[name] ?? ""}</td><td>${reviewed.counts[name]}</td></tr>`);
  document.getElementById("counts").innerHTML = `<tr><th></th><th>model</th><th>reviewed</th></tr>${rows.join("")}` +
    `<tr><th>cells</th><td>${model.cells}</td><td>${reviewed.cells}</td></tr>` +
    `<tr><th>abnormal / 1000</th><td>${model.abnormal_per_1000 ?? ""}</td><td>${reviewed.abnormal_per_1000}</td></tr>`;
  labelGallery();
}

function renderFilters() {
  const names = state.info.classes.concat(["rejected"]);
  document.getElementById("filters").innerHTML = names.map((name, i) =>
    `<label><input type="checkbox" data-class="${i}" checked><span class="swatch" style="background:${colour(i)}"></span>${name}</label>`).join("");
  document.querySelectorAll("#filters input").forEach((box) => box.addEventListener("change", () => {
    const index = Number(box.dataset.class);
    if (box.checked) state.hidden.delete(index); else state.hidden.add(index);
    fetchCells();
  }));
  const slider = document.getElementById("min-p");
  slider.addEventListener("input", () => {
    state.minP = Number(slider.value);
    document.getElementById("min-p-value").textContent = state.minP.toFixed(2);
    fetchCells();
  });
}

function step(delta) {
  const gallery = state.info.gallery;
  if (!gallery.length) return;
  state.galleryIndex = Math.min(gallery.length - 1, Math.max(0, state.galleryIndex + delta));
  select(gallery[state.galleryIndex].id, true);
}

document.addEventListener("keydown", (event) => {
  if (event.target.tagName === "INPUT" || event.ctrlKey || event.metaKey || event.altKey) return;
  const key = event.key;
  if (key === "j") step(1);
  else if (key === "k") step(-1);
  else if (key === "a") decide("accept");
  else if (key === "r") decide("reject");
  else if (key === "u") decide("clear");
  else if (/^[1-9]$/.test(key) && Number(key) <= state.info.classes.length) decide("relabel", state.info.classes[Number(key) - 1]);
  else return;
  event.preventDefault();
  event.stopPropagation();  // OpenSeadragon's own keys (a pans, r rotates) must not act as well
}, true);

(async function start() {
  state.info = await getJSON(`${api}/info`);
  document.getElementById("rule").textContent = `Rule: ${state.info.rule || ""}. A screening aid, not a diagnosis.`;
  renderGallery();
  renderFilters();
  if (state.info.dzi) openViewer();
  else document.getElementById("viewer").textContent = state.info.missing;
  applyReview(await getJSON(`${api}/review`));  // after the slide: it waits for the cell index
  state.ready = true;
})();
