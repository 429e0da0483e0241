// The staff dashboard: key figures and charts for a window, the live table (polled), and a
// session's timeline on click. Authenticated by the HttpOnly sign-in cookie; same-origin only.

const LIVE_REFRESH_MS = 4000;
const SUMMARY_REFRESH_MS = 60000;
const $ = (id) => document.getElementById(id);

let windowParams = new URLSearchParams();
let selected = null;

async function getJSON(url) {
  const response = await fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } });
  if (response.status === 401) {
    location.href = "/admin"; // signed out (expired, or the key was removed)
    throw new Error("signed out");
  }
  if (!response.ok) throw new Error(`${url}: HTTP ${response.status}`);
  return response.json();
}

function pct(value) {
  return value === null || value === undefined ? "–" : `${(value * 100).toFixed(1)} %`;
}

function duration(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  const s = Math.round(seconds);
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const r = s % 60;
  return h ? `${h}h ${String(m).padStart(2, "0")}m` : `${m}m ${String(r).padStart(2, "0")}s`;
}

function time(iso) {
  return iso ? new Date(iso).toLocaleString([], { dateStyle: "short", timeStyle: "medium" }) : "–";
}

function cell(text, className) {
  const td = document.createElement("td");
  td.textContent = text;
  if (className) td.className = className;
  return td;
}

function computeWindow() {
  const range = $("range").value;
  const params = new URLSearchParams();
  if (range === "custom") {
    if ($("since").value) params.set("since", $("since").value);
    if ($("until").value) params.set("until", $("until").value);
  } else {
    const until = new Date();
    const since = new Date(until.getTime() - Number(range) * 86400000);
    params.set("since", since.toISOString());
    params.set("until", new Date(until.getTime() + 60000).toISOString());
  }
  params.set("tz", Intl.DateTimeFormat().resolvedOptions().timeZone || "UTC");
  return params;
}

async function loadSummary() {
  const s = await getJSON(`/api/v1/analytics/summary?${windowParams}`);
  $("kpi-total").textContent = s.total.toLocaleString();
  $("kpi-rate").textContent = pct(s.completion_rate);
  $("kpi-ended").textContent = `${s.completed.toLocaleString()} completed · ${s.abandoned.toLocaleString()} abandoned`;
  $("kpi-median").textContent = duration(s.duration_seconds.median);
  $("kpi-p90").textContent = `p90 ${duration(s.duration_seconds.p90)} · mean ${duration(s.duration_seconds.mean)}`;
  const ab = s.abandonment;
  $("kpi-abandoned").textContent = ab.total.toLocaleString();
  $("kpi-reasons").textContent = Object.entries(ab.by_reason)
    .map(([reason, n]) => `${reason.replaceAll("_", " ")} ${n}`)
    .join(" · ") || "nobody";
  for (const img of document.querySelectorAll("img[data-chart]")) {
    img.src = `/api/v1/analytics/charts/${img.dataset.chart}.svg?${windowParams}`;
  }
}

async function loadLive() {
  const live = await getJSON("/api/v1/live?limit=200");
  $("kpi-active").textContent = live.count.toLocaleString();
  $("kpi-silent").textContent = live.silent ? `${live.silent} silent` : "none silent";
  $("kpi-silent").classList.toggle("alert", live.silent > 0);
  $("silent-after").textContent = Math.round(live.silent_after_seconds);
  const body = document.createElement("tbody");
  if (!live.sessions.length) {
    const tr = document.createElement("tr");
    tr.append(cell("No session is running right now.", "muted"));
    tr.firstChild.colSpan = 6;
    body.append(tr);
  }
  for (const s of live.sessions) {
    const tr = document.createElement("tr");
    tr.dataset.candidate = s.candidate_id;
    tr.tabIndex = 0;
    if (s.candidate_id === selected) tr.classList.add("selected");
    const since = s.seconds_since_heartbeat === null ? "never" : `${Math.round(s.seconds_since_heartbeat)} s ago`;
    const state = document.createElement("td");
    const tag = document.createElement("span");
    tag.className = `tag ${s.silent ? "tag-silent" : s.tab_closed ? "tag-warn" : "tag-ok"}`;
    tag.textContent = s.silent ? "silent" : s.tab_closed ? "tab closed" : "live";
    state.append(tag);
    if (s.multiple_devices) {
      const pages = document.createElement("span");
      pages.className = "tag tag-warn";
      pages.dataset.mark = "multiple-devices";
      pages.title = `Opened from ${s.devices} device(s) and ${s.addresses} address(es)`;
      pages.textContent = "several devices";
      state.append(" ", pages);
    }
    tr.append(
      cell(s.candidate_id, "mono"),
      cell(time(s.test_start_time)),
      cell(duration(s.remaining_seconds), "num"),
      cell(since, "num"),
      cell(String(s.sections_completed), "num"),
      state,
    );
    body.append(tr);
  }
  $("live").tBodies[0].replaceWith(body);
  $("live-updated").textContent = `updated ${new Date(live.server_now).toLocaleTimeString()}`;
}

async function showTimeline(candidateId) {
  selected = candidateId;
  const [session, timeline] = await Promise.all([
    getJSON(`/api/v1/sessions/${encodeURIComponent(candidateId)}`),
    getJSON(`/api/v1/sessions/${encodeURIComponent(candidateId)}/events`),
  ]);
  $("timeline-title").textContent = `Timeline · ${candidateId}`;
  const ended = session.status === "active" ? `${duration(session.remaining_seconds)} left` : `${session.status} (${session.completion_method}) at ${time(session.completed_at)}`;
  $("timeline-summary").textContent = `Started ${time(session.test_start_time)} · deadline ${time(session.deadline)} · ${ended} · ${session.sections_completed.length} section(s) · ${Object.keys(session.pending_answers).length} answer(s)`;
  const list = $("timeline");
  list.replaceChildren();
  for (const e of timeline.events) {
    const li = document.createElement("li");
    li.className = `event event-${e.type}`;
    const when = document.createElement("time");
    when.textContent = time(e.at);
    const what = document.createElement("strong");
    what.textContent = e.type.replaceAll("_", " ");
    const detail = document.createElement("span");
    detail.className = "muted small";
    const bits = Object.entries(e.detail).map(([k, v]) => `${k}: ${Array.isArray(v) ? v.join(", ") : v}`);
    detail.textContent = [`by ${e.actor}`, ...bits].join(" · ");
    li.append(when, what, detail);
    list.append(li);
  }
  $("timeline-card").hidden = false;
  $("timeline-card").scrollIntoView({ behavior: "smooth", block: "nearest" });
}

function bind() {
  $("range").addEventListener("change", () => {
    const custom = $("range").value === "custom";
    $("custom").hidden = !custom;
    if (!custom) refreshWindow();
  });
  $("window").addEventListener("submit", (event) => {
    event.preventDefault();
    refreshWindow();
  });
  const open = (event) => {
    const row = event.target.closest("tr[data-candidate]");
    if (row && (event.type === "click" || event.key === "Enter")) showTimeline(row.dataset.candidate).catch(console.error);
  };
  $("live").addEventListener("click", open);
  $("live").addEventListener("keydown", open);
  $("timeline-close").addEventListener("click", () => {
    $("timeline-card").hidden = true;
    selected = null;
  });
}

function refreshWindow() {
  windowParams = computeWindow();
  loadSummary().catch(console.error);
}

bind();
refreshWindow();
loadLive().catch(console.error);
setInterval(() => loadLive().catch(console.error), LIVE_REFRESH_MS);
setInterval(() => { if ($("range").value !== "custom") refreshWindow(); }, SUMMARY_REFRESH_MS);
