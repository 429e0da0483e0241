/**
 * The demo test page: wires the page to Invigilator's public browser client and nothing else.
 *
 * The candidate's token arrives in the URL fragment (`/demo?candidate=ID#token=…`, never sent
 * to a server); it is moved to sessionStorage at once and dropped from the address bar, so a
 * reload in this tab resumes the same session.
 */

import { Invigilator } from "/static/invigilator.js";

const $ = (selector) => document.querySelector(selector);
const $$ = (selector) => Array.from(document.querySelectorAll(selector));

/** completion_method → [title, explanation, how it ended in a few words] */
const METHODS = {
  manual: ["Test submitted", "You submitted the test. Your answers are safely stored.", "Submitted by you"],
  timer_expired: [
    "Time is up",
    "The time ran out, and the test was submitted with the answers saved by then.",
    "Time ran out",
  ],
  tab_close: [
    "Test closed",
    "The tab was closed and not reopened in time, so the test was submitted.",
    "Tab closed",
  ],
  admin: ["Submitted by staff", "A member of staff submitted the test on your behalf.", "Submitted by staff"],
  heartbeat_timeout: [
    "Session abandoned",
    "The page stopped answering for too long, so the session was closed.",
    "No heartbeat",
  ],
  admin_terminated: ["Ended by staff", "A member of staff ended the test.", "Ended by staff"],
  timer_abandoned: [
    "Time is up",
    "The time ran out before the test was submitted, so it was not accepted.",
    "Time ran out, not submitted",
  ],
};
/** The candidate submitted, but from another page: this page must not say "by you". */
const SUBMITTED_ELSEWHERE = [
  "Test submitted",
  "The test was submitted from another window or device. The answers saved then are final.",
  "Submitted",
];
const STATUSES = { completed: "Completed", abandoned: "Abandoned", active: "Active" };

const QUESTION_TITLES = Object.fromEntries(
  $$("[data-question]").map((input) => [
    input.dataset.question,
    input.closest(".question")?.querySelector(".prompt")?.textContent ?? input.dataset.question,
  ]),
);

/** Show exactly one of the page's panels. */
function show(id) {
  for (const panel of ["loading", "intro", "test", "elsewhere", "result", "problem"]) {
    $(`#${panel}`).hidden = panel !== id;
  }
  $("#status").hidden = id !== "test";
}

function problem(message) {
  $("#problem-text").textContent = message;
  show("problem");
}

/** Read the token from the fragment (first visit) or from this tab's sessionStorage (reload). */
function tokenFor(candidateId) {
  const key = `invigilator-demo:token:${candidateId}`;
  const fragment = new URLSearchParams(location.hash.slice(1));
  const fromFragment = fragment.get("token");
  if (fromFragment) {
    try {
      sessionStorage.setItem(key, fromFragment);
    } catch {
      // storage blocked: this tab works until it reloads
    }
    history.replaceState(null, "", location.pathname + location.search);
    return fromFragment;
  }
  try {
    return sessionStorage.getItem(key);
  } catch {
    return null;
  }
}

function formatClock(seconds) {
  const s = Math.max(0, Math.floor(seconds));
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const pad = (n) => String(n).padStart(2, "0");
  return h > 0 ? `${h}:${pad(m)}:${pad(s % 60)}` : `${pad(m)}:${pad(s % 60)}`;
}

function renderClock(seconds) {
  const clock = $("#countdown");
  clock.textContent = formatClock(seconds);
  clock.dataset.remaining = String(seconds);
  clock.dataset.level = seconds <= 60 ? "danger" : seconds <= 300 ? "warning" : "normal";
}

function renderConnection(online) {
  const pill = $("#connection");
  pill.dataset.online = String(online);
  pill.querySelector(".label").textContent = online ? "Online" : "Offline";
  pill.title = online ? "The server is reachable" : "The server cannot be reached; answers are kept on this device";
}

function renderSave({ pending, saving, failing, superseded }) {
  const saved = $("#saved");
  let text = "All answers saved";
  let state = "saved";
  if (superseded) {
    text = pending > 0 ? `${pending} unsaved — kept on this device` : "Open in another window";
    state = "failing";
  } else if (pending > 0 && failing) {
    text = `${pending} unsaved — kept on this device`;
    state = "failing";
  } else if (saving) {
    text = "Saving…";
    state = "saving";
  } else if (pending > 0) {
    text = pending === 1 ? "1 change to save" : `${pending} changes to save`;
    state = "pending";
  }
  saved.textContent = text;
  saved.dataset.state = state;
}

function markSections(sections) {
  for (const section of sections) {
    const badge = $(`[data-badge="${CSS.escape(section)}"]`);
    if (badge) badge.hidden = false;
    const button = $(`[data-complete="${CSS.escape(section)}"]`);
    if (button) {
      button.disabled = true;
      button.textContent = "Section done";
    }
  }
}

function showOutcome(outcome) {
  const elsewhere = outcome.completionMethod === "manual" && !outcome.byThisPage;
  const [title, text, how] = (elsewhere ? SUBMITTED_ELSEWHERE : METHODS[outcome.completionMethod]) ?? [
    "Test ended",
    "This test session has ended.",
    outcome.completionMethod ?? "—",
  ];
  $("#result-title").textContent = title;
  $("#result-text").textContent = text;
  $("#result-status").textContent = STATUSES[outcome.status] ?? outcome.status;
  $("#result-method").textContent = how;
  $("#result-time").textContent = outcome.completedAt
    ? new Date(outcome.completedAt).toLocaleString(undefined, { dateStyle: "medium", timeStyle: "short" })
    : "—";
  const result = $("#result");
  result.dataset.byThisPage = String(Boolean(outcome.byThisPage));
  result.dataset.status = outcome.status;
  result.dataset.method = outcome.completionMethod ?? "";

  const unsaved = Object.keys(outcome.unsaved ?? {});
  $("#result-unsaved").hidden = unsaved.length === 0;
  $("#result-unsaved").textContent = `${unsaved.length} answer(s) could not be saved before the end.`;

  const list = $("#result-answers");
  list.replaceChildren();
  const answers = outcome.session?.pending_answers ?? {};
  const questions = Object.keys(QUESTION_TITLES).filter((q) => q in answers);
  for (const question of questions) {
    const row = document.createElement("div");
    const term = document.createElement("dt");
    const value = document.createElement("dd");
    term.textContent = QUESTION_TITLES[question];
    value.textContent = String(answers[question] ?? "");
    row.dataset.question = question;
    row.append(term, value);
    list.append(row);
  }
  $(".answers-title").hidden = questions.length === 0;
  show("result");
}

/** The server holds a newer answer than this page showed: show it, and say so. */
function showConflict({ question, value, reason }) {
  const input = $(`[data-question="${CSS.escape(question)}"]`);
  if (input && typeof value === "string") input.value = value;
  if (input) input.dataset.conflict = reason;
  const title = QUESTION_TITLES[question] ?? question;
  const why =
    reason === "older_draft"
      ? "the copy kept on this device was older than the answer saved since"
      : "a newer answer was saved from another window or device";
  const note = $("#conflict-note");
  note.textContent = `Your answer to “${title}” now shows the saved version: ${why}.`;
  note.hidden = false;
  note.dataset.question = question;
}

/** A newer window took over: lock this one, and offer to continue here. */
function showElsewhere(client, { pending }) {
  $("#elsewhere-kept").textContent =
    pending > 0
      ? `${pending} answer(s) typed here are kept on this device; they are saved when you continue here.`
      : "Everything typed here was saved.";
  for (const input of $$("[data-question]")) input.disabled = true;
  show("elsewhere");
  $("#status").hidden = false;
  const button = $("#continue-here");
  button.disabled = false;
  button.onclick = async () => {
    button.disabled = true;
    try {
      const resume = await client.continueHere();
      if (!resume.ended) for (const input of $$("[data-question]")) input.disabled = false;
    } catch (error) {
      button.disabled = false;
      $("#elsewhere-kept").textContent = `Could not continue here: ${error.message}`;
    }
  };
}

/**
 * Paused by staff: every input and button is disabled (what was typed is already queued and
 * still saved) until the pause ends; sections already done stay done.
 */
function lockTest(locked) {
  const form = $("#test");
  form.dataset.paused = String(locked);
  $("#paused").hidden = !locked;
  for (const control of $$("#test [data-question], #test button")) {
    if (locked) {
      if (!control.disabled) control.dataset.lockedByPause = "true";
      control.disabled = true;
    } else if (control.dataset.lockedByPause) {
      delete control.dataset.lockedByPause;
      control.disabled = false;
    }
  }
  $("#countdown").dataset.paused = String(locked);
}

function enableTest(client) {
  for (const input of $$("[data-question]")) {
    input.disabled = false;
    input.addEventListener("input", () => client.saveAnswer(input.dataset.question, input.value));
    input.addEventListener("blur", () => void client.flush());
  }
  for (const button of $$("[data-complete]")) {
    if (button.textContent === "Section done") continue;
    button.disabled = false;
    button.addEventListener("click", async () => {
      button.disabled = true;
      try {
        markSections(await client.completeSection(button.dataset.complete));
      } catch {
        button.disabled = false;
      }
    });
  }
  const submit = $("#submit");
  submit.disabled = false;
  $("#test").addEventListener("submit", async (event) => {
    event.preventDefault();
    submit.disabled = true;
    submit.textContent = "Submitting…";
    try {
      await client.submit(); // onEnd shows the outcome
    } catch (error) {
      $("#submit-note").textContent = error.message;
      $("#submit-note").classList.add("warning");
      submit.disabled = false;
      submit.textContent = "Submit test";
    }
  });
}

async function main() {
  const candidateId = new URLSearchParams(location.search).get("candidate");
  if (!candidateId) {
    show("intro");
    return;
  }
  const token = tokenFor(candidateId);
  if (!token) {
    problem("This demo test's key is not in this browser tab (it is kept per tab). Start a new demo test instead.");
    return;
  }

  const client = new Invigilator({
    candidateId,
    token,
    onResume: ({ answers, sectionsCompleted, fromPause }) => {
      if (fromPause) {
        lockTest(false);
        return;
      }
      for (const input of $$("[data-question]")) {
        const value = answers[input.dataset.question];
        if (typeof value === "string") input.value = value;
      }
      markSections(sectionsCompleted);
      show("test");
    },
    onPause: () => lockTest(true),
    onTick: renderClock,
    onConflict: showConflict,
    onSuperseded: (info) => showElsewhere(client, info),
    onExpire: () => {
      $("#submit-note").textContent = "Time is up — submitting your answers…";
    },
    onEnd: showOutcome,
    onConnectionChange: renderConnection,
    onSaveStateChange: renderSave,
    onError: (error) => {
      if (error.question) {
        $("#submit-note").textContent = `An answer was refused: ${error.message}`;
        $("#submit-note").classList.add("warning");
      } else {
        problem(`The server refused this test's key (${error.code}). Start a new demo test instead.`);
      }
    },
  });
  renderConnection(client.online);
  try {
    const resume = await client.start();
    if (!resume.ended) {
      enableTest(client);
      if (client.paused) lockTest(true); // opened while paused
    }
  } catch (error) {
    if (!$("#problem").hidden) return;
    problem(`The test could not be loaded: ${error.message}`);
  }
  // For tests and the curious: the running client.
  window.invigilatorDemo = client;
}

main();
