// The staff dashboard: key figures and charts for a window, the live table (polled), a
// session's timeline on click, and the staff controls: each action on one session (from the
// live table or the timeline) or on a selection of the live table (the bulk route), each with
// a reason and a confirmation. Authenticated by the HttpOnly sign-in cookie; same-origin only.

const LIVE_REFRESH_MS = 4000;
const SUMMARY_REFRESH_MS = 60000;
const $ = (id) => document.getElementById(id);

let windowParams = new URLSearchParams();
let selected = null;
let selectedSession = null; // the timeline panel's session, as last read
const picked = new Set(); // the live table's selection, kept across refreshes

// Every staff action: its fields, its route (by the API's fixed paths), the body it sends,
// and what the confirmation says. `bulk`: offered on a selection (POST /api/v1/sessions/bulk).
const ACTIONS = {
  extend: {
    title: "Extend time",
    fields: ["minutes", "reason"],
    path: "extend",
    body: (f) => ({ minutes: f.minutes, reason: f.reason }),
    confirm: (who, f) => `Give ${who} ${f.minutes} more minute(s)?`,
    bulk: true,
  },
  end: {
    title: "End the session",
    fields: ["outcome", "reason"],
    path: "end",
    body: (f) => ({ outcome: f.outcome, reason: f.reason }),
    confirm: (who, f) => (f.outcome === "terminate"
      ? `Terminate ${who}? It is recorded as abandoned; this cannot be undone.`
      : `Submit ${who} now with the answers saved so far? This cannot be undone.`),
    bulk: true,
    danger: true,
  },
  incident: {
    title: "Record an incident",
    fields: ["severity", "reason_code", "note"],
    path: "incidents",
    body: (f) => ({ severity: f.severity, reason_code: f.reason_code, note: f.note }),
    confirm: (who, f) => `Record a ${f.severity} incident (${f.reason_code}) on ${who}?`,
    bulk: true,
  },
  pause: {
    title: "Pause",
    fields: ["reason"],
    path: "pause",
    body: (f) => ({ reason: f.reason }),
    confirm: (who) => `Pause ${who}? The clock stands still until resumed.`,
    bulk: true,
  },
  resume: {
    title: "Resume",
    fields: ["reason"],
    path: "resume",
    body: (f) => ({ reason: f.reason }),
    confirm: (who) => `Resume ${who}? The clock starts again.`,
    bulk: true,
  },
  reopen: {
    title: "Reopen",
    fields: ["minutes", "reason"],
    path: "reopen",
    body: (f) => ({ minutes: f.minutes, reason: f.reason }),
    confirm: (who, f) => `Reopen ${who} with ${f.minutes} minute(s)? Its clock starts when the candidate is back.`,
    bulk: false,
  },
  accommodations: {
    title: "Accommodations",
    fields: ["time_multiplier", "extra_minutes", "reason"],
    path: "accommodations",
    method: "PUT",
    body: (f) => {
      const body = { reason: f.reason };
      if (f.time_multiplier !== null) body.time_multiplier = f.time_multiplier;
      if (f.extra_minutes !== null) body.extra_minutes = f.extra_minutes;
      return body;
    },
    confirm: (who, f) => `Set ${[
      f.time_multiplier !== null ? `a time multiplier of ${f.time_multiplier}` : null,
      f.extra_minutes !== null ? `${f.extra_minutes} extra minute(s)` : null,
    ].filter(Boolean).join(" and ")} for ${who}?`,
    bulk: false,
  },
};
// Live rows are running sessions: reopen (an ended session) is in the timeline panel only.
const ROW_ACTIONS = ["extend", "end", "incident", "pause", "resume", "accommodations"];

async function getJSON(url) {
  const response = await fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } });
  if (response.status === 401) {
    location.href = "/admin"; // signed out (expired, or the key was removed)
    throw new Error("signed out");
  }
  if (!response.ok) throw new Error(`${url}: HTTP ${response.status}`);
  return response.json();
}

async function send(method, url, body) {
  const response = await fetch(url, {
    method,
    credentials: "same-origin",
    headers: { Accept: "application/json", "Content-Type": "application/json" },
    body: JSON.stringify(body),
  });
  if (response.status === 401) {
    location.href = "/admin";
    throw new Error("signed out");
  }
  const data = await response.json().catch(() => ({}));
  if (!response.ok) {
    const why = data.detail || data.title || "";
    const err = new Error(response.status === 404 || response.status === 405
      ? `${why || "not found"} (HTTP ${response.status}: is this action available on this server?)`
      : `${why} (HTTP ${response.status})`);
    err.status = response.status;
    throw err;
  }
  return data;
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

// An event's detail value as text: nested objects (a session's policy, its accommodations)
// as "key value" pairs, lists joined.
function shown(value) {
  if (Array.isArray(value)) return value.map(shown).join(", ");
  if (value && typeof value === "object") return Object.entries(value).map(([k, v]) => `${k} ${shown(v)}`).join(", ");
  return String(value);
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
  $("kpi-flagged").textContent = s.flagged.total.toLocaleString();
  $("kpi-incidents").textContent = s.flagged.incidents
    ? `${s.flagged.incidents} incident(s) · ${Object.entries(s.flagged.by_severity).filter(([, n]) => n).map(([sev, n]) => `${sev} ${n}`).join(" · ")}`
    : "no incidents";
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
  $("kpi-silent").textContent += live.flagged ? ` · ${live.flagged} flagged` : "";
  const listed = new Set(live.sessions.map((s) => s.candidate_id));
  for (const id of [...picked]) if (!listed.has(id)) picked.delete(id); // ended or gone
  const body = document.createElement("tbody");
  if (!live.sessions.length) {
    const tr = document.createElement("tr");
    tr.append(cell("No session is running right now.", "muted"));
    tr.firstChild.colSpan = 9;
    body.append(tr);
  }
  for (const s of live.sessions) {
    const tr = document.createElement("tr");
    tr.dataset.candidate = s.candidate_id;
    tr.tabIndex = 0;
    if (s.candidate_id === selected) tr.classList.add("selected");
    const pick = document.createElement("td");
    pick.className = "pick";
    const box = document.createElement("input");
    box.type = "checkbox";
    box.className = "pick-row";
    box.checked = picked.has(s.candidate_id);
    box.setAttribute("aria-label", `Select ${s.candidate_id}`);
    pick.append(box);
    const flag = document.createElement("td");
    if (s.incidents) {
      const badge = document.createElement("span");
      badge.className = `tag tag-flag tag-flag-${s.flag}`;
      badge.textContent = `${s.flag} · ${s.incidents}`;
      badge.title = `${s.incidents} incident(s); the most serious: ${s.flag}`;
      flag.append(badge);
    }
    const act = document.createElement("td");
    const menu = document.createElement("select");
    menu.className = "row-action";
    menu.setAttribute("aria-label", `Act on ${s.candidate_id}`);
    menu.append(new Option("Act…", ""));
    for (const name of ROW_ACTIONS) menu.append(new Option(ACTIONS[name].title, name));
    act.append(menu);
    const since = s.seconds_since_heartbeat === null ? "never" : `${Math.round(s.seconds_since_heartbeat)} s ago`;
    const state = document.createElement("td");
    const tag = document.createElement("span");
    tag.className = `tag ${s.silent ? "tag-silent" : s.paused || s.tab_closed ? "tag-warn" : "tag-ok"}`;
    tag.textContent = s.silent ? "silent" : s.paused ? "paused" : s.tab_closed ? "tab closed" : "live";
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
      pick,
      cell(s.candidate_id, "mono"),
      cell(time(s.test_start_time)),
      cell(duration(s.remaining_seconds), "num"),
      cell(since, "num"),
      cell(String(s.sections_completed), "num"),
      state,
      flag,
      act,
    );
    body.append(tr);
  }
  $("live").tBodies[0].replaceWith(body);
  showPicked(listed.size);
  $("live-updated").textContent = `updated ${new Date(live.server_now).toLocaleTimeString()}`;
}

async function showTimeline(candidateId) {
  selected = candidateId;
  const [session, timeline] = await Promise.all([
    getJSON(`/api/v1/sessions/${encodeURIComponent(candidateId)}`),
    getJSON(`/api/v1/sessions/${encodeURIComponent(candidateId)}/events`),
  ]);
  selectedSession = session;
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
    const bits = Object.entries(e.detail).map(([k, v]) => `${k}: ${shown(v)}`);
    detail.textContent = [`by ${e.actor}`, ...bits].join(" · ");
    li.append(when, what, detail);
    list.append(li);
  }
  const running = session.status === "active";
  for (const button of $("session-actions").querySelectorAll("button[data-action]")) {
    const action = button.dataset.action;
    button.disabled = action === "reopen" ? running : !running && action !== "incident";
    // where the server says whether the clock stands still, only the one that applies
    if (running && typeof session.paused === "boolean" && (action === "pause" || action === "resume")) {
      button.disabled = (action === "pause") === session.paused;
    }
  }
  $("timeline-card").hidden = false;
  $("timeline-card").scrollIntoView({ behavior: "smooth", block: "nearest" });
}

function showPicked(listedCount) {
  const n = picked.size;
  $("bulk-count").textContent = n ? `${n} selected` : "No session selected";
  $("bulk-apply").disabled = n === 0;
  $("bulk-clear").disabled = n === 0;
  $("select-all").checked = n > 0 && n === listedCount;
  $("select-all").indeterminate = n > 0 && n < listedCount;
}

// --- the action dialog: fields, then a confirmation, then the request ----------------------

let pending = null; // {action, targets: [candidate ids], bulk: boolean}

function openAction(action, targets, bulk) {
  const spec = ACTIONS[action];
  pending = { action, targets, bulk };
  $("action-title").textContent = spec.title;
  $("action-target").textContent = bulk ? `${targets.length} selected session(s): ${targets.slice(0, 5).join(", ")}${targets.length > 5 ? ", …" : ""}` : `Session of ${targets[0]}`;
  for (const label of $("action-fields").querySelectorAll("label[data-field]")) {
    label.hidden = !spec.fields.includes(label.dataset.field);
  }
  $("action-form").reset();
  const current = selectedSession && selectedSession.candidate_id === targets[0] && selectedSession.accommodations;
  if (action === "accommodations" && !bulk && current) { // start from what the session has
    $("f-multiplier").value = current.time_multiplier;
    $("f-extra").value = current.extra_minutes;
  }
  $("action-confirm").classList.toggle("danger", Boolean(spec.danger));
  stage("fields");
  $("action-dialog").showModal();
  const first = $("action-fields").querySelector("label:not([hidden]) input, label:not([hidden]) select, label:not([hidden]) textarea");
  if (first) first.focus();
}

function stage(which) {
  const confirming = which === "confirm";
  $("action-fields").hidden = confirming;
  $("action-confirm-text").hidden = !confirming;
  $("action-next").hidden = confirming;
  $("action-back").hidden = !confirming;
  $("action-confirm").hidden = !confirming;
  $("action-confirm").disabled = false;
  $("action-error").textContent = "";
}

function number(id) {
  const text = $(id).value.trim();
  return text === "" ? null : Number(text);
}

function readFields() {
  const f = {
    minutes: number("f-minutes"),
    outcome: $("f-outcome").value,
    severity: $("f-severity").value,
    reason_code: $("f-reason-code").value.trim(),
    note: $("f-note").value,
    time_multiplier: number("f-multiplier"),
    extra_minutes: number("f-extra"),
    reason: $("f-reason").value.trim(),
  };
  const fields = ACTIONS[pending.action].fields;
  // What the dashboard asks for before it asks the server (which checks everything again).
  if (fields.includes("reason") && !f.reason) return [f, "Give a reason: it goes in the timeline."];
  if (fields.includes("reason_code") && !f.reason_code) return [f, "Give a reason code, e.g. second_person."];
  if (fields.includes("minutes") && !(Number.isInteger(f.minutes) && f.minutes >= 1)) return [f, "Minutes: a whole number, at least 1."];
  if (pending.action === "accommodations" && f.time_multiplier === null && f.extra_minutes === null) return [f, "Set a time multiplier, extra minutes, or both."];
  return [f, null];
}

function who() {
  return pending.bulk ? `${pending.targets.length} session(s)` : pending.targets[0];
}

async function confirmAction() {
  const [f] = readFields();
  const spec = ACTIONS[pending.action];
  $("action-confirm").disabled = true;
  try {
    let message;
    if (pending.bulk) {
      const reply = await send("POST", "/api/v1/sessions/bulk", { action: pending.action, candidate_ids: pending.targets, ...spec.body(f) });
      const refused = reply.items.filter((i) => i.result === "refused");
      message = `${spec.title}: ${reply.changed} changed, ${reply.unchanged} unchanged, ${reply.refused} refused of ${reply.requested}` +
        (refused.length ? ` (${refused.slice(0, 5).map((i) => `${i.candidate_id}: ${i.code}`).join(", ")}${refused.length > 5 ? ", …" : ""})` : "");
      picked.clear();
    } else {
      const id = pending.targets[0];
      await send(spec.method || "POST", `/api/v1/sessions/${encodeURIComponent(id)}/${spec.path}`, spec.body(f));
      message = `${spec.title}: done for ${id}.`;
    }
    $("action-dialog").close();
    status(message);
    loadLive().catch(console.error);
    if (selected && (!pending.bulk || pending.targets.includes(selected))) showTimeline(selected).catch(console.error);
    if (pending.action === "incident") refreshWindow();
  } catch (err) {
    $("action-error").textContent = err.message;
    $("action-confirm").disabled = false;
  }
}

function status(message) {
  $("action-status").textContent = message;
  $("action-status").hidden = false;
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
    if (event.target.closest("input, select, button, label")) return; // the row's controls
    const row = event.target.closest("tr[data-candidate]");
    if (row && (event.type === "click" || event.key === "Enter")) showTimeline(row.dataset.candidate).catch(console.error);
  };
  $("live").addEventListener("change", (event) => {
    const row = event.target.closest("tr[data-candidate]");
    if (event.target.id === "select-all") {
      for (const box of $("live").querySelectorAll("input.pick-row")) {
        box.checked = event.target.checked;
        const id = box.closest("tr").dataset.candidate;
        if (box.checked) picked.add(id); else picked.delete(id);
      }
    } else if (row && event.target.classList.contains("pick-row")) {
      if (event.target.checked) picked.add(row.dataset.candidate); else picked.delete(row.dataset.candidate);
    } else if (row && event.target.classList.contains("row-action") && event.target.value) {
      const action = event.target.value;
      event.target.value = "";
      openAction(action, [row.dataset.candidate], false);
      return;
    }
    showPicked($("live").querySelectorAll("input.pick-row").length);
  });
  $("bulk").addEventListener("submit", (event) => {
    event.preventDefault();
    if (picked.size) openAction($("bulk-action").value, [...picked], true);
  });
  $("bulk-clear").addEventListener("click", () => {
    picked.clear();
    for (const box of $("live").querySelectorAll("input.pick-row")) box.checked = false;
    showPicked($("live").querySelectorAll("input.pick-row").length);
  });
  $("session-actions").addEventListener("click", (event) => {
    const button = event.target.closest("button[data-action]");
    if (button && selected) openAction(button.dataset.action, [selected], false);
  });
  $("action-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const [f, problem] = readFields();
    if (problem) {
      $("action-error").textContent = problem;
      return;
    }
    $("action-confirm-text").textContent = ACTIONS[pending.action].confirm(who(), f);
    stage("confirm");
    $("action-confirm").focus();
  });
  $("action-back").addEventListener("click", () => stage("fields"));
  $("action-cancel").addEventListener("click", () => $("action-dialog").close());
  $("action-confirm").addEventListener("click", () => confirmAction());
  $("live").addEventListener("click", open);
  $("live").addEventListener("keydown", open);
  $("timeline-close").addEventListener("click", () => {
    $("timeline-card").hidden = true;
    selected = null;
    selectedSession = null;
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
