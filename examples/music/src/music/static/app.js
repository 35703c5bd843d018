// The music page: pick a listener, see their history and recommendations, play a
// track (a listen posted to the events service) and watch the recommendations follow.
// Plain DOM code; every value from the server goes in through textContent.
"use strict";

const EVENTS_URL = document.body.dataset.eventsUrl || "";
const K = 10;
const state = { user: null, recs: [], known: new Map() };
const $ = (sel) => document.querySelector(sel);

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (key === "class") node.className = value;
    else if (key === "dataset") Object.assign(node.dataset, value);
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value);
  }
  for (const child of children.flat()) {
    if (child !== null && child !== undefined) {
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
  }
  return node;
}

async function api(path, options) {
  const response = await fetch(path, options);
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(body.error || `${response.status} ${response.statusText}`);
  return body;
}

function toast(text) {
  const box = $("#toast");
  box.textContent = text;
  box.hidden = false;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { box.hidden = true; }, 2600);
}

function ago(ts) {
  const s = Math.max(0, Date.now() / 1000 - ts);
  if (s < 60) return "just now";
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  if (s < 86400) return `${Math.round(s / 3600)} h ago`;
  const days = Math.round(s / 86400);
  return days < 60 ? `${days} days ago` : new Date(ts * 1000).toLocaleDateString();
}

// --- listeners ------------------------------------------------------------------

const VALID_ID = /^[A-Za-z0-9._-]{1,64}$/;

async function loadUsers(query = "") {
  const { users } = await api(`/api/users?q=${encodeURIComponent(query)}`);
  const list = $("#user-list");
  list.replaceChildren();
  if (query && VALID_ID.test(query) && !users.some((u) => u.user_id === query)) {
    list.append(userItem({ user_id: query, top_genre: "no history yet", listens: 0 }, true));
  }
  for (const user of users) {
    state.known.set(user.user_id, user);
    list.append(userItem(user, false));
  }
}

function plays(n) {
  return `${n.toLocaleString()} play${n === 1 ? "" : "s"}`;
}

function userItem(user, isNew) {
  const item = el("li", {
    class: `user-item${isNew ? " new" : ""}${user.user_id === state.user ? " active" : ""}`,
    dataset: { user: user.user_id }, onclick: () => selectUser(user.user_id),
  },
  el("div", {}, el("div", { class: "id" }, user.user_id),
    el("div", { class: "genre" }, user.top_genre || "")),
  isNew ? null : el("span", { class: "chip" }, plays(user.listens)));
  return item;
}

async function selectUser(user) {
  state.user = user;
  state.recs = [];
  history.replaceState(null, "", `#${encodeURIComponent(user)}`);
  document.querySelectorAll(".user-item").forEach((node) => {
    node.classList.toggle("active", node.dataset.user === user);
  });
  $("#empty").hidden = true;
  $("#user-view").hidden = false;
  $("#user-name").textContent = user;
  $("#rec-note").textContent = "";
  await refresh(false);
}

// --- recommendations and history --------------------------------------------------

async function refresh(highlight) {
  const user = state.user;
  const [recs, listens] = await Promise.all([
    api(`/users/${encodeURIComponent(user)}/recommendations?k=${K}`),
    api(`/users/${encodeURIComponent(user)}/history?n=12`),
  ]);
  if (user !== state.user) return null; // another listener was picked meanwhile
  const before = new Set(state.recs.map((r) => r.track));
  state.recs = recs.items;
  renderAnswer(recs, listens);
  renderTracks($("#recs"), recs.items, (item) => [
    el("span", { class: "right" }, item.score.toFixed(3),
      el("span", { class: "score" }, el("i", { style: `width:${scoreWidth(item, recs.items)}%` }))),
  ], highlight ? before : null);
  renderTracks($("#history"), listens.listens, (item) => [
    el("span", { class: "right" }, ago(item.ts)),
  ], null);
  $("#history-empty").hidden = listens.listens.length > 0;
  return { recs, listens };
}

function scoreWidth(item, items) {
  const top = Math.max(...items.map((i) => i.score), 1e-9);
  return Math.max(4, Math.round((100 * item.score) / top));
}

function renderAnswer(recs, listens) {
  const meta = $("#answer-meta");
  const chips = [
    recs.source === "model"
      ? el("span", { class: "chip model" }, `model v${recs.model.version}`)
      : el("span", { class: "chip batch", title: "the model could not answer" },
        `nightly batch${recs.model.version ? ` (v${recs.model.version})` : ""}`),
    recs.cold ? el("span", { class: "chip cold" }, "cold start: popular tracks") : null,
    el("span", { class: "chip" }, `${recs.ms} ms`),
  ];
  meta.replaceChildren(...chips.filter(Boolean));
  renderUserMeta(listens.known);
}

function renderUserMeta(known) {
  const user = state.known.get(state.user);
  $("#user-meta").textContent = !known ? "new listener: no history yet"
    : user ? `mostly ${user.top_genre} · ${plays(user.listens)}` : "listener";
}

function renderTracks(list, items, right, before) {
  list.replaceChildren(...items.map((item) => {
    const row = el("li", { class: "track", dataset: { track: item.track } },
      el("button", {
        class: "play", title: `Play ${item.title}`, "aria-label": `Play ${item.title}`,
        onclick: (event) => play(item, event.currentTarget),
      }, "▶"),
      el("div", {},
        el("div", { class: "title" }, item.title),
        el("div", { class: "sub" }, item.artist, el("span", { class: "genre-chip" }, item.genre))),
      right(item));
    if (before && !before.has(item.track)) {
      row.classList.add("fresh");
      setTimeout(() => row.classList.remove("fresh"), 2500);
    }
    return row;
  }));
}

// --- playing a track ------------------------------------------------------------------

async function play(item, button) {
  button.disabled = true;
  const started = performance.now();
  try {
    const listen = await api(`${EVENTS_URL}/listens`, {
      method: "POST", headers: { "content-type": "application/json" },
      body: JSON.stringify({ user: state.user, track: item.track }),
    });
    toast(`▶ ${item.title} — ${item.artist}`);
    // the realtime worker folds the listen into the history (within a second when
    // all is well); look for it for up to ten seconds
    for (let i = 0; i < 50; i += 1) {
      const result = await refresh(true);
      if (!result) return;
      if (result.listens.listens.some((l) => l.id === listen.id)) {
        // these recommendations were asked for beside that history, perhaps just
        // before the listen was stored: ask again, now that it is
        if (!(await refresh(true))) return;
        const ms = Math.round(performance.now() - started);
        $("#rec-note").textContent = `updated ${ms} ms after the play`;
        // the play counts in the listener list (a new listener is listed now)
        const user = state.user;
        await loadUsers($("#user-search").value.trim());
        const { users } = await api(`/api/users?q=${encodeURIComponent(user)}`);
        const row = users.find((u) => u.user_id === user);
        if (row) state.known.set(user, row);
        if (state.user === user) renderUserMeta(true);
        return;
      }
      await new Promise((resolve) => setTimeout(resolve, i < 10 ? 100 : 250));
    }
    toast("the listen is recorded; the history has not caught up yet");
  } catch (error) {
    toast(`could not play: ${error.message}`);
  } finally {
    button.disabled = false;
  }
}

// --- the model panel --------------------------------------------------------------------

const METRIC_NAMES = {
  "recall@10": "recall@10", "ndcg@10": "NDCG@10", "coverage@10": "coverage@10",
  "baseline_recall@10": "popularity recall@10",
  "genre_share@10": "top 10 in favourite genre",
  "genre_catalog_share": "that genre in the catalogue",
};

function fmt(name, value) {
  if (typeof value !== "number") return String(value);
  const share = name.startsWith("coverage") || name.startsWith("genre");
  return share ? `${(100 * value).toFixed(1)}%` : value.toFixed(4);
}

async function loadModel() {
  let info;
  try {
    info = await api("/api/model");
  } catch (error) {
    $("#model-badge").textContent = "model: unavailable";
    $("#model-badge").classList.add("down");
    return;
  }
  const badge = $("#model-badge");
  badge.classList.toggle("down", !info.ready);
  badge.textContent = info.serving
    ? `${info.name} v${info.serving} · ${info.alias}` : `${info.name}: not loaded`;
  const serving = info.versions.find((v) => v.version === info.serving);
  const body = $("#model-body");
  body.classList.remove("muted");
  body.replaceChildren(...[
    el("div", { class: "version" }, info.serving ? `v${info.serving}` : "—"),
    el("div", { class: "muted" }, `${info.name}@${info.alias}`,
      info.production && info.production !== info.serving
        ? ` (moving to v${info.production})` : ""),
    el("h2", { style: "margin-top:16px" }, "Hold-out metrics"),
    serving
      ? el("dl", {}, ...Object.entries(METRIC_NAMES)
        .filter(([key]) => key in serving.metrics)
        .flatMap(([key, label]) => [el("dt", {}, label), el("dd", {}, fmt(key, serving.metrics[key]))]))
      : el("p", { class: "muted" }, "no metrics recorded"),
    serving && Object.keys(serving.params).length
      ? el("div", { class: "muted", style: "font-size:12px" },
        Object.entries(serving.params).map(([k, v]) => `${k}=${v}`).join(" · "))
      : null,
    el("h2", { style: "margin-top:16px" }, "Versions"),
    el("ul", { class: "versions" }, ...info.versions.map((v) => el("li", {},
      el("span", { class: v.version === info.serving ? "serving" : "" },
        `v${v.version}`, v.version === info.serving ? " · serving" : ""),
      el("span", { class: `verdict ${v.gate || ""}`, title: v.gate_reason || "" },
        v.gate || ""),
      el("span", {}, "recall " + fmt("recall@10", v.metrics["recall@10"] ?? NaN))))),
    info.fallbacks
      ? el("p", { class: "hint" }, `${info.fallbacks} answers from the nightly batch`) : null,
    el("a", { class: "report-link", href: "/report?since=24h", target: "_blank" },
      "Report: traffic, latency, drift (24 h) ↗"),
  ].filter(Boolean));
}

// --- start ------------------------------------------------------------------------------

let searchTimer;
$("#user-search").addEventListener("input", (event) => {
  clearTimeout(searchTimer);
  searchTimer = setTimeout(() => loadUsers(event.target.value.trim()), 150);
});
$("#user-search").addEventListener("keydown", (event) => {
  const value = event.target.value.trim();
  if (event.key === "Enter" && VALID_ID.test(value)) selectUser(value);
});

loadModel();
setInterval(loadModel, 5000);
loadUsers().then(() => {
  const wanted = decodeURIComponent(location.hash.slice(1));
  if (wanted && VALID_ID.test(wanted)) selectUser(wanted);
});
