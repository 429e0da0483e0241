/**
 * invigilator.js — the browser side of an Invigilator test session.
 *
 * An ES module with no build step and no dependencies. It keeps a candidate's page in step
 * with the server that owns the session:
 *
 * - **heartbeats** on the interval the server names (`next_heartbeat_seconds`), with jitter,
 *   flagged `active` when the candidate typed, clicked or scrolled since the last one;
 * - a **countdown** on the server's clock: every reply carries `server_now` and `deadline`, and
 *   the page counts from the last reply with the monotonic `performance.now()`, so a wrong or
 *   changed clock on the candidate's machine changes nothing (`onTick`, `onExpire`);
 * - **autosave**: every edit is queued with its `seq` — the time it was typed, on the server's
 *   clock — kept in `localStorage` until the server acknowledges it, and sent with retry and
 *   exponential backoff: an answer survives a reload, a crash or a dropped network, and a draft
 *   sent late keeps its time, so it never beats a newer answer saved from elsewhere;
 * - **one store for every tab**: each question is its own `localStorage` entry, merged by edit
 *   time and followed through `storage` events, so what one tab keeps no other tab drops;
 * - **page claims**: the page claims the session when it starts (`POST …/pages`). With the
 *   session's page policy `single`, a newer page takes over: this page stops, and `onSuperseded`
 *   asks it to say so and offer `continueHere()`. With `multiple`, pages coexist and each sees
 *   the others' answers;
 * - **conflicts**: when the server holds a newer answer than the page (another page's), the
 *   client takes it and `onConflict` tells the page, which shows it: "saved" only means saved;
 * - the **connection** as the requests see it (`onConnectionChange`);
 * - **tab close**: `visibilitychange` (hidden) and `pagehide` send a beacon to `/tab-close`
 *   (a reload's first heartbeat cancels it); focus and visibility changes go to `/events`;
 * - **resume**: `start()` reads `/state`, claims the session and hands the page its answers —
 *   per question the newer edit of the server's and this browser's (`onResume`);
 * - **pause**: staff may pause the session; the next reply says so (`paused`), the countdown
 *   stands still and `onPause` is called; when staff resume it `onResume` is called again
 *   (with `fromPause`), and the countdown goes on from the time that was left. An extension
 *   or an accommodation moves the deadline the same way, within one heartbeat;
 * - **the end**: once the session has ended (submitted here, timed out, ended by staff…), every
 *   timer stops and `onEnd(outcome)` is called exactly once.
 *
 * @example
 * import { start } from "/static/invigilator.js";
 * const client = await start({
 *   candidateId, token,
 *   onResume: ({ answers }) => fillInputs(answers),
 *   onTick: (seconds) => { clock.textContent = seconds; },
 *   onEnd: (outcome) => showOutcome(outcome),
 * });
 * input.addEventListener("input", () => client.saveAnswer("q1", input.value));
 * submitButton.addEventListener("click", () => client.submit());
 *
 * @module invigilator
 */

/** The largest integer a JSON number carries exactly (the server's upper bound for `seq`). */
const MAX_SEQ = Number.MAX_SAFE_INTEGER;

/** Beyond this many bytes a request cannot use `keepalive` (browsers cap it at 64 KiB). */
const KEEPALIVE_MAX_BYTES = 60 * 1024;

/** Problem codes after which retrying cannot help: the page must get a new token or link. */
const FATAL_CODES = new Set(["token_invalid", "token_expired", "unauthorized", "forbidden", "not_found"]);

/** Replies that refuse an answer for good (invalid, too large): retrying cannot help. */
const REFUSED_STATUSES = new Set([400, 413, 422]);

/** UTF-8 size of a string (what the server counts against its body limit). */
function byteLength(text) {
  return typeof TextEncoder === "undefined" ? text.length * 3 : new TextEncoder().encode(text).length;
}

/** DOM events that count as the candidate being active. */
const ACTIVITY_EVENTS = ["keydown", "input", "pointerdown", "wheel", "touchstart", "scroll"];

/**
 * Options for {@link Invigilator} and {@link start}.
 *
 * @typedef {object} InvigilatorOptions
 * @property {string} candidateId The candidate whose session this page runs.
 * @property {string} token The candidate's bearer token (from the staff API's start call).
 * @property {string} [baseUrl=""] Where the Invigilator API lives; "" for the page's own origin.
 * @property {number} [autosaveDelayMs=600] Debounce: an edit is sent this long after the last
 *   keystroke (a `flush()` or `submit()` sends at once).
 * @property {number} [retryInitialMs=1000] First retry delay after a failed request; it doubles
 *   up to `retryMaxMs`, with jitter.
 * @property {number} [retryMaxMs=30000] The longest wait between retries.
 * @property {number} [heartbeatSeconds=15] The heartbeat interval until the server names one.
 * @property {number} [heartbeatJitter=0.2] Each beat comes up to this fraction early, so that a
 *   room full of candidates does not beat in step (and never later than the server asked).
 * @property {number} [requestTimeoutMs=15000] A request taking longer counts as failed.
 * @property {number} [maxRequestBytes=2097152] The server's request body limit
 *   (`INVIGILATOR_MAX_BODY_BYTES`). A save larger than this is not sent: it is handled as the
 *   server's 413 would be (split, then the answer too large on its own is refused and
 *   reported through `onError`), because a server that refuses a body before reading it may
 *   close the connection under the browser, which then reports a network error, not the 413.
 * @property {number} [endPollMs=2000] After the countdown reaches zero, how often to ask the
 *   server whether it has ended the session.
 * @property {boolean} [trackFocus=true] Report focus lost/regained and tab hidden/visible.
 * @property {boolean} [tabCloseBeacon=true] Send the tab-close beacon when the page is hidden
 *   or unloaded.
 * @property {Storage|null} [storage=localStorage] Where unacknowledged answers are kept (one
 *   entry per question, shared by every tab of the browser profile); `null` keeps them in
 *   memory only.
 * @property {string} [pageId] This page's id for its claim on the session (default: a new
 *   random one per page).
 * @property {number} [refreshSeconds=30] With the page policy `multiple`, how often the page
 *   reads the others' answers (also whenever it becomes visible again).
 * @property {(info: {pending: number}) => void} [onSuperseded] The test was opened in another
 *   window or device (page policy `single`): this page has stopped. `pending` answers are
 *   still kept on this device; `continueHere()` claims the session again and resumes here.
 * @property {(conflict: Conflict) => void} [onConflict] The server holds a newer answer than
 *   the page showed: put `conflict.value` into the field and tell the candidate.
 * @property {(resume: ResumeInfo) => void} [onResume] The session is running: put `answers`
 *   into the page. Called from `start()`, and again each time a pause ends (`fromPause` is
 *   then true and `answers` are this page's own, as they are).
 * @property {(pause: PauseInfo) => void} [onPause] Staff paused the session: the countdown
 *   stands still; the page should take no input until `onResume`. Answers already typed are
 *   still saved.
 * @property {(remainingSeconds: number, clock: ClockInfo) => void} [onTick] The countdown,
 *   whenever the whole number of seconds left changes.
 * @property {() => void} [onExpire] The countdown reached zero (the server then ends the
 *   session, and `onEnd` follows).
 * @property {(outcome: Outcome) => void} [onEnd] The session has ended; the client has stopped.
 * @property {(online: boolean) => void} [onConnectionChange] The server became reachable or
 *   unreachable.
 * @property {(save: SaveState) => void} [onSaveStateChange] The autosave queue changed.
 * @property {(error: InvigilatorError) => void} [onError] Something the page should show: the
 *   token was refused (the client has stopped), or an answer was refused as invalid or too
 *   large (it was dropped from the queue; `error.question` names it).
 */

/**
 * What {@link Invigilator#start} resolves to, and what `onResume` receives.
 *
 * @typedef {object} ResumeInfo
 * @property {boolean} ended True when the session had already ended (then `onEnd` was called
 *   and nothing else runs).
 * @property {Object<string, *>} answers question → answer: the server's saved answers merged
 *   with the answers this browser had not yet had acknowledged (those win).
 * @property {string[]} restoredLocal The questions whose answers came from this browser's queue.
 * @property {string[]} sectionsCompleted Sections the server has recorded as completed.
 * @property {string[]|null} plannedSections The test's sections, when the session names them.
 * @property {number} remainingSeconds Seconds left on the server's clock.
 * @property {object} session The server's `/state` reply, as it came (after a pause: the
 *   heartbeat's reply).
 * @property {Outcome|null} outcome When `ended`, how it ended.
 * @property {boolean} paused True when the session is paused now (then `onPause` follows).
 * @property {boolean} fromPause True when this call is the end of a pause.
 */

/**
 * What `onPause` receives.
 *
 * @typedef {object} PauseInfo
 * @property {number} remainingSeconds What is left on the clock, standing still.
 */

/**
 * How a session ended, as `onEnd` receives it.
 *
 * @typedef {object} Outcome
 * @property {string} status "completed" or "abandoned".
 * @property {string|null} completionMethod "manual", "timer_expired", "tab_close", "admin",
 *   "heartbeat_timeout" or "admin_terminated".
 * @property {string|null} completedAt When it ended (ISO 8601, server time).
 * @property {boolean} byThisPage True when this page submitted it (its `submit()`, or an earlier
 *   one of this page whose reply was lost); false on every other page.
 * @property {Object<string, *>} unsaved Answers that never reached the server before the end
 *   (normally empty: `submit()` saves everything first).
 * @property {object|null} session The server's session body when the reply carried one.
 */

/**
 * An answer the page showed that lost to a newer one, as `onConflict` receives it.
 *
 * @typedef {object} Conflict
 * @property {string} question
 * @property {*} value The newer answer, now the page's: show it.
 * @property {*} discarded What this page had (its own unsaved or shown text), or undefined.
 * @property {string} reason "superseded" (this page's save lost to a newer edit),
 *   "older_draft" (a draft kept on this device was older than the saved answer), or
 *   "changed_elsewhere" (another page changed the answer).
 */

/**
 * @typedef {object} ClockInfo
 * @property {number} deadlineMs The deadline, in epoch milliseconds (server time).
 * @property {number} serverNowMs The server's current time as this page estimates it.
 */

/**
 * @typedef {object} SaveState
 * @property {number} pending Answers not yet acknowledged by the server.
 * @property {boolean} saving A save request is in flight.
 * @property {boolean} failing The last save attempt failed and a retry is scheduled.
 * @property {Date|null} lastSavedAt When a save was last acknowledged.
 * @property {boolean} superseded A newer page took over: nothing is saved from this page
 *   until `continueHere()`; `pending` answers are kept on this device.
 */

/**
 * An error from the client or the API. `code` is the API's stable problem code, or
 * `network_error` (no reply), `timeout` or `not_saved`.
 */
export class InvigilatorError extends Error {
  /**
   * @param {string} message
   * @param {{status?: number, code?: string, problem?: object|null, question?: string|null,
   *   cause?: unknown}} [details]
   */
  constructor(message, details = {}) {
    super(message, details.cause === undefined ? undefined : { cause: details.cause });
    this.name = "InvigilatorError";
    /** HTTP status, or 0 when there was no reply. @type {number} */
    this.status = details.status ?? 0;
    /** Stable error code. @type {string} */
    this.code = details.code ?? "network_error";
    /** The problem+json body, when the server sent one. @type {object|null} */
    this.problem = details.problem ?? null;
    /** The question an answer-specific error is about. @type {string|null} */
    this.question = details.question ?? null;
  }

  /** True when retrying later may succeed (no reply, a timeout, 429 or 5xx). */
  get retryable() {
    return this.status === 0 || this.status === 429 || this.status >= 500;
  }
}

/**
 * One candidate's session, run from this page.
 *
 * Create it, then `start()` it; or use the {@link start} shortcut.
 */
export class Invigilator {
  /** @param {InvigilatorOptions} options */
  constructor(options) {
    if (!options || typeof options.candidateId !== "string" || !options.candidateId) {
      throw new TypeError("Invigilator: candidateId is required");
    }
    if (typeof options.token !== "string" || !options.token) {
      throw new TypeError("Invigilator: token is required");
    }
    /** @private */
    this._o = {
      baseUrl: "",
      autosaveDelayMs: 600,
      retryInitialMs: 1000,
      retryMaxMs: 30000,
      heartbeatSeconds: 15,
      heartbeatJitter: 0.2,
      requestTimeoutMs: 15000,
      maxRequestBytes: 2 * 1024 * 1024,
      endPollMs: 2000,
      trackFocus: true,
      tabCloseBeacon: true,
      refreshSeconds: 30,
      ...options,
    };
    /** The candidate this client runs. @type {string} */
    this.candidateId = options.candidateId;
    /** @private */
    this._token = options.token;
    /** @private */
    this._url = `${String(this._o.baseUrl).replace(/\/+$/, "")}/api/v1/sessions/${encodeURIComponent(this.candidateId)}`;
    /** @private */
    this._storage = "storage" in options ? options.storage : defaultStorage();
    /** @private One key per question under this prefix; the newest claim under `claim`. */
    this._storagePrefix = `invigilator:v2:${this.candidateId}:`;
    /** This page's id in its claim on the session. @type {string} */
    this.pageId = typeof options.pageId === "string" && options.pageId ? options.pageId : newPageId();
    /** @private The session's page policy, from the server ("single" or "multiple"). */
    this._pages = "single";
    /** @private A newer page took over (policy `single`): this page is locked. */
    this._superseded = false;
    /** @private question → the seq of the server's answer, as last seen. */
    this._known = Object.create(null);

    // Clock: the server's time at a moment of performance.now(), and the deadline.
    /** @private @type {{serverMs: number, perf: number}|null} */
    this._clock = null;
    /** @private */
    this._deadlineMs = NaN;
    /** @private */
    this._lastTick = null;
    /** @private */
    this._expired = false;
    /** @private Paused: the time left when the server last said so (ms), else NaN. */
    this._pausedLeftMs = NaN;

    // Autosave queue: question → {value, seq}, persisted with the seq counter.
    /** @private @type {Object<string, {value: *, seq: number}>} */
    this._pending = Object.create(null);
    /** @private */
    this._lastSeq = 0;
    /** @private @type {Object<string, *>} */
    this._answers = Object.create(null);
    /** @private */
    this._inflight = null;
    /** @private */
    this._saveFailures = 0;
    /** @private */
    this._batchLimit = Infinity;
    /** @private */
    this._lastSavedAt = null;

    /** @private */
    this._online = typeof navigator === "undefined" || navigator.onLine !== false;
    /** @private */
    this._active = false;
    /** @private */
    this._heartbeatSeconds = this._o.heartbeatSeconds;
    /** @private */
    this._heartbeatFailures = 0;
    /** @private */
    this._heartbeatInflight = false;
    /** A submit is in flight: no heartbeat leaves until it is answered. @private */
    this._submitting = false;
    /** @private */
    this._beaconSent = false;
    /** @private */
    this._focused = typeof document === "undefined" || document.hasFocus();

    /** @private */
    this._timers = { heartbeat: 0, save: 0, tick: 0, endPoll: 0, refresh: 0 };
    /** @private */
    this._retryPending = false;
    /** @private @type {Array<() => void>} */
    this._unlisten = [];
    /** @private @type {Promise<ResumeInfo>|null} */
    this._starting = null;
    /** @private */
    this._running = false;
    /** @private */
    this._stopped = false;
    /** @private @type {Outcome|null} */
    this._outcome = null;
    /** @private @type {Promise<void>|null} */
    this._ending = null;

    this._load();
  }

  // --- public API ------------------------------------------------------------------------

  /**
   * Resume from the server's `/state` (retrying while the network is down), merge the answers,
   * call `onResume`, then start the heartbeat, the countdown, the autosave and the listeners.
   * If the session has already ended it calls `onEnd` instead. Calling it again returns the
   * same promise.
   *
   * @returns {Promise<ResumeInfo>}
   * @throws {InvigilatorError} When the server refuses the token or knows no such session.
   */
  start() {
    if (!this._starting) this._starting = this._start();
    return this._starting;
  }

  /**
   * Queue one answer for saving (debounced). The value may be any JSON value.
   *
   * @param {string} question
   * @param {*} value
   * @returns {boolean} False when the session has ended (nothing is queued).
   */
  saveAnswer(question, value) {
    return this.saveAnswers({ [question]: value });
  }

  /**
   * Queue several answers at once (question → value).
   *
   * @param {Object<string, *>} answers
   * @returns {boolean} False when the session has ended (nothing is queued).
   */
  saveAnswers(answers) {
    if (this._outcome || this._stopped || this._superseded) return false;
    for (const [question, value] of Object.entries(answers)) {
      const entry = { value, seq: this._nextSeq() };
      this._pending[question] = entry;
      this._answers[question] = value;
      this._storePut(question, entry);
    }
    this._active = true;
    this._notifySave();
    this._scheduleSave(this._o.autosaveDelayMs);
    return true;
  }

  /**
   * Send every queued answer now and wait for the acknowledgements.
   *
   * @returns {Promise<boolean>} True when nothing is left unacknowledged; false when a save
   *   failed (offline, server unavailable) — the answers stay queued and retries go on.
   */
  async flush() {
    while (!this._outcome && !this._stopped && this.pendingCount > 0) {
      if (this._inflight) {
        await this._inflight;
        continue;
      }
      if (!this._running) return false;
      const ok = await this._sendBatch();
      if (!ok) return false;
    }
    return this.pendingCount === 0;
  }

  /**
   * Mark a section as completed (repeating it is harmless).
   *
   * @param {string} section
   * @returns {Promise<string[]>} The sections completed so far.
   * @throws {InvigilatorError}
   */
  async completeSection(section) {
    const body = await this._request("POST", "/sections", { section, page_id: this.pageId });
    return Array.isArray(body.sections_completed) ? body.sections_completed : [];
  }

  /**
   * Submit the test: save every queued answer first, then complete the session. Calls
   * `onEnd` and resolves with the outcome (also when the session had already ended).
   *
   * @returns {Promise<Outcome>}
   * @throws {InvigilatorError} `not_saved` when answers could not be saved first (offline):
   *   nothing was submitted, the answers stay queued — try again when back online.
   */
  async submit() {
    if (this._outcome) return this._outcome;
    if (this._superseded) {
      throw new InvigilatorError("this test was opened in another window; continue here first", {
        code: "page_superseded",
      });
    }
    await this.start();
    if (this._outcome) return this._outcome;
    const saved = await this.flush();
    if (this._outcome) return this._outcome;
    if (!saved) {
      throw new InvigilatorError(
        "some answers are not saved yet, so the test was not submitted; they are kept on this device — try again",
        { code: "not_saved" },
      );
    }
    // No heartbeat leaves while the submit is in flight: one that reached the server after the
    // submit would be answered 409 (the session ended), a failed request in the console.
    this._submitting = true;
    clearTimeout(this._timers.heartbeat);
    try {
      const body = await this._request("POST", `/complete?page_id=${encodeURIComponent(this.pageId)}`);
      if (body.status === "active") {
        // Reopened by staff before this page was heard from again: nothing was submitted.
        throw new InvigilatorError("the test was reopened; it was not submitted", { code: "reopened" });
      }
      this._end(outcomeOf(body, { byThisPage: !body.already_ended || this._submittedHere(body) }));
    } catch (error) {
      if (!this._outcome) throw error;
    } finally {
      this._submitting = false;
      if (!this._outcome && this._running) this._scheduleHeartbeat(this._heartbeatSeconds);
    }
    return /** @type {Outcome} */ (this._outcome);
  }

  /**
   * After `onSuperseded`: claim the session again for this page ("continue here"), take the
   * newer of the server's and this device's answers, and resume (`onResume` is called again).
   * The other page is then the one that stops.
   *
   * @returns {Promise<ResumeInfo>}
   */
  continueHere() {
    if (!this._superseded || this._outcome || this._stopped) return this.start();
    this._superseded = false;
    this._starting = this._start();
    return this._starting;
  }

  /**
   * Stop everything (timers, listeners) without ending the session: for a page that goes
   * away on its own terms. Queued answers stay in storage for the next page load.
   */
  stop() {
    this._stopped = true;
    this._teardown();
  }

  /** The server's current time as this page estimates it (epoch ms), or NaN before a reply. */
  serverNow() {
    return this._clock ? this._clock.serverMs + (performance.now() - this._clock.perf) : NaN;
  }

  /** Whole seconds left on the server's clock (NaN before the first reply). */
  get remainingSeconds() {
    const now = this.serverNow();
    if (Number.isNaN(now) || Number.isNaN(this._deadlineMs)) return NaN;
    if (this._outcome) return 0;
    return Math.max(0, Math.ceil(this._leftMs() / 1000));
  }

  /** Whether staff have paused the session (as of the last reply). */
  get paused() {
    return !Number.isNaN(this._pausedLeftMs);
  }

  /** The deadline as a Date (server time), or null before the first reply. */
  get deadline() {
    return Number.isNaN(this._deadlineMs) ? null : new Date(this._deadlineMs);
  }

  /** Answers as this page knows them: the resumed ones plus every edit since. */
  get answers() {
    return { ...this._answers };
  }

  /** How many answers wait for the server's acknowledgement. */
  get pendingCount() {
    return Object.keys(this._pending).length;
  }

  /** Whether the last request reached the server. */
  get online() {
    return this._online;
  }

  /** How the session ended, or null while it runs. */
  get outcome() {
    return this._outcome;
  }

  /** True once a newer page took over (page policy `single`), until `continueHere()`. */
  get superseded() {
    return this._superseded;
  }

  /** The session's page policy: "single" or "multiple". */
  get pages() {
    return this._pages;
  }

  // --- start and resume ------------------------------------------------------------------

  /** @private */
  async _start() {
    let state;
    for (let attempt = 0; ; attempt += 1) {
      if (this._stopped) throw new InvigilatorError("stopped", { code: "stopped" });
      try {
        state = await this._request("GET", "/state");
        break;
      } catch (error) {
        if (!(error instanceof InvigilatorError) || !error.retryable) throw error;
        await sleep(this._backoff(attempt));
      }
    }
    if (this._outcome) return resumeInfo(state, {}, [], this._outcome);
    if (state.status !== "active") {
      const outcome = outcomeOf(state, { byThisPage: this._submittedHere(state) });
      this._end(outcome);
      return resumeInfo(state, {}, [], outcome);
    }

    // The claim: from now on this is the session's newest page (policy `single`: the others
    // stop at their next write, or at once when they share this browser's storage).
    for (let attempt = 0; ; attempt += 1) {
      if (this._stopped) throw new InvigilatorError("stopped", { code: "stopped" });
      try {
        state = await this._request("POST", "/pages", { page_id: this.pageId });
        break;
      } catch (error) {
        if (this._outcome) return resumeInfo(state, {}, [], this._outcome);
        if (!(error instanceof InvigilatorError) || !error.retryable) throw error;
        await sleep(this._backoff(attempt));
      }
    }
    this._pages = state.pages === "multiple" ? "multiple" : "single";
    this._storeSet("claim", { page: this.pageId, pages: this._pages });

    // Per question the newer edit wins: a draft kept here that is older than the answer the
    // server holds is dropped, and the page is told (onConflict, after onResume).
    this._mergeStore();
    const server = state.pending_answers ?? {};
    const seqs = state.answer_seq ?? {};
    const conflicts = [];
    this._known = Object.assign(Object.create(null), seqs);
    for (const [question, entry] of Object.entries(this._pending)) {
      const held = Number.isSafeInteger(seqs[question]) ? seqs[question] : -1;
      if (entry.seq > held) continue;
      delete this._pending[question];
      this._storeDrop(question, entry.seq);
      if (!sameValue(entry.value, server[question])) {
        conflicts.push({ question, value: server[question], discarded: entry.value, reason: "older_draft" });
      }
    }
    const local = Object.keys(this._pending);
    const answers = { ...server };
    for (const question of local) answers[question] = this._pending[question].value;
    this._answers = Object.assign(Object.create(null), answers);

    const resume = resumeInfo(state, answers, local, null);
    resume.conflicts = conflicts;
    this._running = true;
    this._listen();
    call(this._o.onResume, resume);
    for (const conflict of conflicts) call(this._o.onConflict, conflict);
    if (this.paused) call(this._o.onPause, { remainingSeconds: this.remainingSeconds });
    this._notifySave();
    this._tick();
    this._timers.tick = setInterval(() => this._tick(), 250);
    void this._heartbeat();
    this._scheduleRefresh();
    if (local.length) this._scheduleSave(0);
    return resume;
  }

  /** Whether this page is the one that submitted the session (`page_id` names it). @private */
  _submittedHere(session) {
    return session?.completion_method === "manual" && session?.page_id === this.pageId;
  }

  /**
   * A newer page took over: stop everything but keep what is queued (on this device, for
   * `continueHere()`, and for a newer tab of this browser, which sends it), and tell the page.
   *
   * @private
   */
  _lock() {
    if (this._superseded || this._outcome || this._stopped) return;
    this._superseded = true;
    this._teardown();
    this._notifySave();
    call(this._o.onSuperseded, { pending: this.pendingCount });
  }

  /**
   * Read the server's answers (another page's, policy `multiple`; or learn of a takeover):
   * a newer answer than the page's replaces it, and the page is told.
   *
   * @private
   */
  async _refresh() {
    if (!this._running || this._outcome) return;
    let state;
    try {
      state = await this._request("GET", "/state");
    } catch {
      return; // offline: the next visibility change or timer tries again
    }
    if (!this._running || this._outcome) return;
    if (state.status !== "active") {
      this._end(outcomeOf(state, { byThisPage: this._submittedHere(state) }));
      return;
    }
    if (this._pages === "single" && state.page_id && state.page_id !== this.pageId) {
      this._lock();
      return;
    }
    this._adopt(state.pending_answers ?? {}, state.answer_seq ?? {}, "changed_elsewhere");
  }

  /** Take each server answer newer than what the page has. @private */
  _adopt(values, seqs, reason) {
    for (const [question, seq] of Object.entries(seqs)) {
      if (!Number.isSafeInteger(seq) || seq <= (this._known[question] ?? -1)) continue;
      this._known[question] = seq;
      const mine = this._pending[question];
      if (mine && mine.seq > seq) continue; // this page's edit is newer: it goes out as it is
      if (mine) {
        delete this._pending[question];
        this._storeDrop(question, mine.seq);
      }
      const value = values[question];
      const shown = this._answers[question];
      this._answers[question] = value;
      if (!sameValue(shown, value) || (mine && !sameValue(mine.value, value))) {
        call(this._o.onConflict, { question, value, discarded: mine ? mine.value : shown, reason });
      }
    }
    this._notifySave();
  }

  /** @private */
  _scheduleRefresh() {
    clearTimeout(this._timers.refresh);
    if (!this._running || this._pages !== "multiple" || !(this._o.refreshSeconds > 0)) return;
    this._timers.refresh = setTimeout(async () => {
      await this._refresh();
      this._scheduleRefresh();
    }, this._o.refreshSeconds * 1000);
  }

  // --- requests --------------------------------------------------------------------------

  /**
   * One API call with the token. Resyncs the clock from every reply; a `session_ended`
   * reply ends the client; a refused token stops it.
   *
   * @private
   * @param {string} method
   * @param {string} path
   * @param {object} [body]
   * @param {{keepalive?: boolean}} [options]
   * @returns {Promise<any>}
   */
  async _request(method, path, body, options = {}) {
    const text = body === undefined ? undefined : JSON.stringify(body);
    const controller = typeof AbortController === "undefined" ? null : new AbortController();
    const timer = setTimeout(() => controller?.abort(), this._o.requestTimeoutMs);
    const sentAt = performance.now();
    let response;
    let data = null;
    try {
      response = await fetch(this._url + path, {
        method,
        headers: {
          Authorization: `Bearer ${this._token}`,
          Accept: "application/json",
          ...(text === undefined ? {} : { "Content-Type": "application/json" }),
        },
        body: text,
        cache: "no-store",
        credentials: "omit",
        keepalive: Boolean(options.keepalive) && (text?.length ?? 0) < KEEPALIVE_MAX_BYTES,
        signal: controller?.signal,
      });
      if (response.status !== 204) {
        const raw = await response.text();
        try {
          data = raw ? JSON.parse(raw) : null;
        } catch {
          data = null;
        }
      }
    } catch (cause) {
      this._setOnline(false);
      const timedOut = controller?.signal.aborted ?? false;
      throw new InvigilatorError(timedOut ? "the server did not answer in time" : "the server could not be reached", {
        code: timedOut ? "timeout" : "network_error",
        cause,
      });
    } finally {
      clearTimeout(timer);
    }
    this._setOnline(true);
    if (response.ok) {
      this._sync(data, sentAt, performance.now());
      return data ?? {};
    }
    const code = (data && typeof data.code === "string" && data.code) || `http_${response.status}`;
    const error = new InvigilatorError((data && data.detail) || `HTTP ${response.status}`, {
      status: response.status,
      code,
      problem: data,
    });
    if (code === "session_ended") {
      await this._endAfterRefusal(data);
    } else if (code === "page_superseded") {
      this._lock();
    } else if (FATAL_CODES.has(code) || response.status === 401 || response.status === 403) {
      this._fatal(error);
    }
    throw error;
  }

  /**
   * The server refused a write because the session has ended: stop at once, read the full
   * outcome (with the saved answers) from `/state` if it answers, then call `onEnd`.
   *
   * @private
   */
  _endAfterRefusal(problem) {
    if (this._outcome) return Promise.resolve();
    if (!this._ending) {
      this._teardown();
      this._ending = (async () => {
        let outcome = outcomeOfProblem(problem);
        try {
          const state = await this._request("GET", "/state");
          if (state.status !== "active") outcome = outcomeOf(state, { byThisPage: this._submittedHere(state) });
        } catch {
          // the problem's own members will do
        }
        this._end(outcome);
      })();
    }
    return this._ending;
  }

  /** @private */
  _fatal(error) {
    if (this._stopped || this._outcome) return;
    this._stopped = true;
    this._teardown();
    call(this._o.onError, error);
  }

  /** @private */
  _setOnline(online) {
    if (online === this._online) return;
    this._online = online;
    call(this._o.onConnectionChange, online);
  }

  /** @private */
  _backoff(failures) {
    const base = Math.min(this._o.retryMaxMs, this._o.retryInitialMs * 2 ** Math.min(failures, 20));
    return base * (0.75 + Math.random() * 0.5);
  }

  // --- clock -----------------------------------------------------------------------------

  /**
   * Take the server's clock from a reply. `server_now` is matched to the middle of the
   * request's round trip on the monotonic clock; the candidate's wall clock is never read.
   *
   * @private
   */
  _sync(body, sentAt, receivedAt) {
    if (!body || typeof body !== "object") return;
    const serverMs = parseTime(body.server_now);
    if (!Number.isNaN(serverMs)) this._clock = { serverMs, perf: (sentAt + receivedAt) / 2 };
    const deadlineMs = parseTime(body.deadline);
    const wasPaused = this.paused;
    if (!Number.isNaN(deadlineMs)) {
      if (this._expired && deadlineMs > this._deadlineMs && deadlineMs > this.serverNow()) {
        this._expired = false; // staff extended the time after the countdown reached zero
      }
      this._deadlineMs = deadlineMs;
      // While paused the server's deadline moves with its clock: what is left stands still.
      if (typeof body.paused === "boolean") {
        this._pausedLeftMs = body.paused && !Number.isNaN(serverMs) ? deadlineMs - serverMs : NaN;
      }
    }
    if (this._running && !this._outcome && wasPaused !== this.paused) {
      if (this.paused) {
        call(this._o.onPause, { remainingSeconds: this.remainingSeconds });
      } else {
        const info = resumeInfo(body, this.answers, [], null);
        call(this._o.onResume, { ...info, fromPause: true });
      }
    }
    if (this._running) this._tick();
  }

  /** @private What is left on the clock (ms): standing still while paused. */
  _leftMs() {
    return this.paused ? this._pausedLeftMs : this._deadlineMs - this.serverNow();
  }

  /** @private */
  _tick() {
    if (this._outcome || Number.isNaN(this._deadlineMs) || !this._clock) return;
    const leftMs = this._leftMs();
    const seconds = Math.max(0, Math.ceil(leftMs / 1000));
    if (seconds !== this._lastTick) {
      this._lastTick = seconds;
      call(this._o.onTick, seconds, { deadlineMs: this._deadlineMs, serverNowMs: this.serverNow() });
    }
    if (leftMs <= 0 && !this._expired) {
      this._expired = true;
      call(this._o.onExpire);
      void this._afterExpiry();
    }
  }

  /**
   * The countdown reached zero: save what is queued (the server may allow a grace period),
   * then ask until the server says how the session ended.
   *
   * @private
   */
  async _afterExpiry() {
    await this.flush();
    const poll = async () => {
      if (this._outcome || this._stopped || !this._expired) return;
      try {
        const state = await this._request("GET", "/state");
        if (state.status !== "active") {
          this._end(outcomeOf(state, { byThisPage: this._submittedHere(state) }));
          return;
        }
      } catch {
        // retried below
      }
      if (!this._outcome && !this._stopped && this._expired) {
        this._timers.endPoll = setTimeout(poll, this._o.endPollMs);
      }
    };
    await poll();
  }

  // --- heartbeat -------------------------------------------------------------------------

  /** @private */
  _scheduleHeartbeat(seconds) {
    clearTimeout(this._timers.heartbeat);
    if (!this._running) return;
    const jitter = Math.min(Math.max(this._o.heartbeatJitter, 0), 0.9);
    const ms = seconds * 1000 * (1 - jitter * Math.random());
    this._timers.heartbeat = setTimeout(() => void this._heartbeat(), ms);
  }

  /** @private */
  async _heartbeat() {
    if (!this._running || this._heartbeatInflight || this._submitting) return;
    clearTimeout(this._timers.heartbeat);
    this._heartbeatInflight = true;
    const active = this._active;
    this._active = false;
    try {
      const body = await this._request("POST", "/heartbeat", { active });
      if (typeof body.next_heartbeat_seconds === "number" && body.next_heartbeat_seconds > 0) {
        this._heartbeatSeconds = body.next_heartbeat_seconds;
      }
      this._heartbeatFailures = 0;
      this._beaconSent = false; // this beat cancelled any tab-close the server had noted
      if (this.pendingCount > 0 && this._retryPending) this._scheduleSave(0, true);
      this._scheduleHeartbeat(this._heartbeatSeconds);
    } catch (error) {
      this._active = this._active || active;
      if (this._running && error instanceof InvigilatorError && error.retryable) {
        this._heartbeatFailures += 1;
        const retry = this._backoff(this._heartbeatFailures - 1) / 1000;
        this._scheduleHeartbeat(Math.min(this._heartbeatSeconds, retry));
      }
    } finally {
      this._heartbeatInflight = false;
    }
  }

  // --- autosave --------------------------------------------------------------------------

  /**
   * The next `seq`: above every one used before, and at least the server's time in ms, so
   * an edit made later (on the server's clock) outranks an earlier one even from a browser
   * whose storage was lost.
   *
   * @private
   */
  _nextSeq() {
    const now = this._clock ? Math.floor(this.serverNow()) : 0;
    this._lastSeq = Math.min(MAX_SEQ, Math.max(this._lastSeq + 1, now));
    return this._lastSeq;
  }

  /** @private */
  _scheduleSave(delayMs, force = false) {
    if (!this._running || this._outcome) return;
    if (this._inflight) return; // the running save schedules the next one
    if (this._retryPending && !force) return; // keep the backoff while the network is down
    clearTimeout(this._timers.save);
    this._retryPending = false;
    this._timers.save = setTimeout(() => void this._sendBatch(), delayMs);
  }

  /**
   * Send one batch of queued answers.
   *
   * @private
   * @returns {Promise<boolean>} True when the batch was acknowledged (or refused for good).
   */
  _sendBatch() {
    if (this._inflight) return this._inflight;
    clearTimeout(this._timers.save);
    this._retryPending = false;
    if (this._running && !this._outcome) this._mergeStore(); // what other tabs keep goes too
    const questions = Object.keys(this._pending).slice(0, this._batchLimit);
    if (!questions.length || !this._running || this._outcome) return Promise.resolve(true);
    const answers = {};
    const sentSeq = {};
    let seq = 0;
    for (const question of questions) {
      const entry = this._pending[question];
      answers[question] = entry.value;
      sentSeq[question] = entry.seq;
      seq = Math.max(seq, entry.seq);
    }
    const hidden = typeof document !== "undefined" && document.visibilityState === "hidden";
    const run = async () => {
      let ok = false;
      try {
        // Not before `this._inflight` holds this run: its `finally` must clear it.
        await Promise.resolve();
        const body = { answers, seq, page_id: this.pageId };
        if (byteLength(JSON.stringify(body)) > this._o.maxRequestBytes) {
          throw new InvigilatorError("this answer is too large to save", {
            status: 413,
            code: "payload_too_large",
          });
        }
        const reply = await this._request("PATCH", "/answers", body, { keepalive: hidden });
        const acknowledged = new Set([...(reply.applied ?? []), ...(reply.superseded ?? [])]);
        for (const question of questions) {
          if (!acknowledged.has(question)) continue;
          this._storeDrop(question, sentSeq[question]);
          this._known[question] = Math.max(this._known[question] ?? -1, sentSeq[question]);
          // Forget an answer only if it was not edited again while this save was in flight.
          if (this._pending[question]?.seq === sentSeq[question]) delete this._pending[question];
        }
        // A newer edit from elsewhere won: the page now shows what the server holds.
        const current = reply.current ?? {};
        const currentSeq = reply.current_seq ?? {};
        for (const question of reply.superseded ?? []) {
          if (!(question in current) || this._pending[question]) continue;
          this._known[question] = Math.max(this._known[question] ?? -1, currentSeq[question] ?? -1);
          this._answers[question] = current[question];
          call(this._o.onConflict, {
            question,
            value: current[question],
            discarded: answers[question],
            reason: "superseded",
          });
        }
        this._saveFailures = 0;
        this._lastSavedAt = new Date();
        ok = true;
      } catch (error) {
        if (this._outcome || this._stopped || this._superseded) return false;
        if (error instanceof InvigilatorError && error.code === "time_up") {
          // Past the deadline (policy `grace`): no answer is taken any more, only the submit.
          for (const question of questions) {
            if (this._pending[question]?.seq === sentSeq[question]) delete this._pending[question];
            this._storeDrop(question, sentSeq[question]);
          }
          call(this._o.onError, error);
          ok = true;
        } else if (error instanceof InvigilatorError && REFUSED_STATUSES.has(error.status)) {
          // Refused as invalid or too large: find the culprit alone, then drop it.
          if (questions.length > 1) {
            this._batchLimit = 1;
          } else {
            const question = questions[0];
            if (this._pending[question]?.seq === sentSeq[question]) delete this._pending[question];
            this._storeDrop(question, sentSeq[question]);
            error.question = question;
            call(this._o.onError, error);
          }
          ok = true;
        } else {
          this._saveFailures += 1;
        }
      } finally {
        this._inflight = null;
      }
      if (this.pendingCount === 0) this._batchLimit = Infinity;
      if (this.pendingCount > 0 && this._running && !this._outcome) {
        if (ok) {
          this._scheduleSave(this._batchLimit === 1 ? 0 : this._o.autosaveDelayMs);
        } else {
          clearTimeout(this._timers.save);
          this._retryPending = true;
          this._timers.save = setTimeout(() => {
            this._retryPending = false;
            void this._sendBatch();
          }, this._backoff(this._saveFailures - 1));
        }
      }
      this._notifySave();
      return ok;
    };
    this._inflight = run();
    this._notifySave();
    return this._inflight;
  }

  /** @private */
  _notifySave() {
    call(this._o.onSaveStateChange, {
      pending: this.pendingCount,
      saving: Boolean(this._inflight),
      failing: this._saveFailures > 0,
      lastSavedAt: this._lastSavedAt,
      superseded: this._superseded,
    });
  }

  // --- the store that the tabs share ---------------------------------------------------
  // One localStorage entry per question, `{value, seq}`: a tab writes only the questions it
  // edits, never over a newer edit (a higher seq), and removes an entry only once the server
  // holds that edit or a newer one, so no tab drops what another keeps. `storage` events
  // bring the other tabs' entries in as they are written; every save reads them again.

  /** Bring in what an older version of this client kept (one JSON object). @private */
  _load() {
    if (!this._storage) return;
    const legacy = `invigilator:v1:${this.candidateId}`;
    try {
      const raw = this._storage.getItem(legacy);
      if (raw) {
        const data = JSON.parse(raw);
        for (const [question, entry] of Object.entries(data?.pending ?? {})) {
          if (validEntry(entry)) this._storePut(question, { value: entry.value, seq: entry.seq });
        }
        this._storage.removeItem(legacy);
      }
    } catch {
      // unreadable: nothing to bring in
    }
    this._mergeStore();
  }

  /** Take every entry of the store that is newer than this page's. @private */
  _mergeStore() {
    if (!this._storage) return;
    const prefix = `${this._storagePrefix}a:`;
    let keys = [];
    try {
      for (let i = 0; i < this._storage.length; i += 1) {
        const key = this._storage.key(i);
        if (key && key.startsWith(prefix)) keys.push(key);
      }
    } catch {
      keys = [];
    }
    for (const key of keys) this._takeEntry(key.slice(prefix.length), this._storeGet(key));
  }

  /** An entry from the store (or another tab): adopt it if it is newer. @private */
  _takeEntry(question, entry) {
    if (!validEntry(entry)) return false;
    const mine = this._pending[question];
    if (mine && mine.seq >= entry.seq) return false;
    if (entry.seq <= (this._known[question] ?? -1)) return false; // the server has it, or newer
    this._pending[question] = { value: entry.value, seq: entry.seq };
    this._answers[question] = entry.value;
    this._lastSeq = Math.min(MAX_SEQ, Math.max(this._lastSeq, entry.seq));
    return true;
  }

  /** @private */
  _storeGet(key) {
    try {
      const raw = this._storage.getItem(key);
      return raw ? JSON.parse(raw) : null;
    } catch {
      return null;
    }
  }

  /** @private */
  _storeSet(name, value) {
    if (!this._storage) return;
    try {
      this._storage.setItem(this._storagePrefix + name, JSON.stringify(value));
    } catch {
      // quota exceeded or storage disabled: the queue lives on in memory
    }
  }

  /** Keep an edit, unless the store holds a newer edit of that question. @private */
  _storePut(question, entry) {
    if (!this._storage) return;
    const stored = this._storeGet(`${this._storagePrefix}a:${question}`);
    if (validEntry(stored) && stored.seq > entry.seq) return;
    this._storeSet(`a:${question}`, { value: entry.value, seq: entry.seq });
  }

  /** The server holds the edit `seq` of this question (or a newer one): forget it. @private */
  _storeDrop(question, seq) {
    if (!this._storage) return;
    const key = `${this._storagePrefix}a:${question}`;
    const stored = this._storeGet(key);
    if (stored !== null && validEntry(stored) && stored.seq > seq) return; // a newer edit
    try {
      this._storage.removeItem(key);
    } catch {
      // nothing to remove then
    }
  }

  /** Forget every entry of this session (it has ended: nothing more can be saved). @private */
  _storeClear() {
    if (!this._storage) return;
    try {
      const keys = [];
      for (let i = 0; i < this._storage.length; i += 1) {
        const key = this._storage.key(i);
        if (key && key.startsWith(this._storagePrefix)) keys.push(key);
      }
      for (const key of keys) this._storage.removeItem(key);
    } catch {
      // nothing to clean up then
    }
  }

  /** Another tab of this browser wrote or removed an entry. @private */
  _onStorage(event) {
    if (!event.key || !event.key.startsWith(this._storagePrefix)) return;
    if (event.storageArea && this._storage && event.storageArea !== this._storage) return;
    const name = event.key.slice(this._storagePrefix.length);
    let value = null;
    try {
      value = event.newValue ? JSON.parse(event.newValue) : null;
    } catch {
      value = null;
    }
    if (name === "claim") {
      if (this._pages === "single" && value && value.page && value.page !== this.pageId) this._lock();
      return;
    }
    if (!name.startsWith("a:")) return;
    const question = name.slice(2);
    if (value === null) {
      // Saved by the other tab: ours is saved too if it was that edit or an older one.
      let old = null;
      try {
        old = event.oldValue ? JSON.parse(event.oldValue) : null;
      } catch {
        old = null;
      }
      const mine = this._pending[question];
      if (validEntry(old)) this._known[question] = Math.max(this._known[question] ?? -1, old.seq);
      if (mine && validEntry(old) && mine.seq <= old.seq) {
        delete this._pending[question];
        this._notifySave();
      }
      return;
    }
    const shown = this._answers[question];
    const mine = this._pending[question];
    if (this._takeEntry(question, value)) {
      if (!sameValue(shown, value.value)) {
        call(this._o.onConflict, {
          question,
          value: value.value,
          discarded: mine ? mine.value : shown,
          reason: "changed_elsewhere",
        });
      }
      this._notifySave();
      this._scheduleSave(this._o.autosaveDelayMs);
    }
  }

  // --- page lifecycle --------------------------------------------------------------------

  /** @private */
  _listen() {
    if (typeof window === "undefined" || typeof document === "undefined") return;
    const on = (target, type, handler, options) => {
      target.addEventListener(type, handler, options);
      this._unlisten.push(() => target.removeEventListener(type, handler, options));
    };
    const markActive = () => {
      this._active = true;
    };
    for (const type of ACTIVITY_EVENTS) on(document, type, markActive, { capture: true, passive: true });

    on(window, "storage", (event) => this._onStorage(event));
    on(window, "online", () => {
      void this._heartbeat();
      this._scheduleSave(0, true);
    });
    on(window, "offline", () => this._setOnline(false));

    on(document, "visibilitychange", () => {
      if (document.visibilityState === "hidden") {
        this._event("tab_hidden");
        this._tabClosing();
      } else {
        this._event("tab_visible");
        void this._heartbeat(); // cancels the tab-close the beacon announced
        this._scheduleSave(0, true);
        void this._refresh(); // another page may have taken over, or changed an answer
      }
    });
    on(window, "pagehide", () => this._tabClosing());
    on(window, "pageshow", (event) => {
      if (event.persisted) void this._heartbeat(); // back from the back/forward cache
    });
    on(window, "blur", () => {
      if (this._focused) {
        this._focused = false;
        this._event("focus_lost");
      }
    });
    on(window, "focus", () => {
      if (!this._focused) {
        this._focused = true;
        this._event("focus_regained");
      }
    });
  }

  /** The page is hidden or going away: announce a tab close and send what is queued. @private */
  _tabClosing() {
    if (!this._running || this._outcome) return;
    if (this._o.tabCloseBeacon && !this._beaconSent) {
      this._beaconSent = true;
      const url = `${this._url}/tab-close`;
      const body = JSON.stringify({ token: this._token, page_id: this.pageId });
      let queued = false;
      try {
        queued = typeof navigator.sendBeacon === "function" && navigator.sendBeacon(url, body);
      } catch {
        queued = false;
      }
      if (!queued) {
        fetch(url, {
          method: "POST",
          body,
          keepalive: true,
          credentials: "omit",
          headers: { "Content-Type": "text/plain;charset=UTF-8" },
        }).catch(() => {});
      }
    }
    if (this.pendingCount > 0 && !this._inflight) void this._sendBatch();
  }

  /** Report a focus or visibility change (fire and forget). @private */
  _event(type) {
    if (!this._o.trackFocus || !this._running || this._outcome) return;
    this._request("POST", "/events", { type, page_id: this.pageId }, { keepalive: true }).catch(() => {});
  }

  /** @private */
  _end(outcome) {
    if (this._outcome) return;
    outcome.unsaved = Object.fromEntries(Object.entries(this._pending).map(([q, e]) => [q, e.value]));
    this._outcome = outcome;
    this._teardown();
    this._pending = Object.create(null);
    this._storeClear();
    this._lastTick = 0;
    call(this._o.onTick, 0, { deadlineMs: this._deadlineMs, serverNowMs: this.serverNow() });
    call(this._o.onEnd, outcome);
  }

  /** @private */
  _teardown() {
    this._running = false;
    clearTimeout(this._timers.heartbeat);
    clearTimeout(this._timers.save);
    clearTimeout(this._timers.endPoll);
    clearTimeout(this._timers.refresh);
    clearInterval(this._timers.tick);
    for (const unlisten of this._unlisten.splice(0)) unlisten();
  }
}

/**
 * Create a client and start it: resolves once the session has been resumed (after
 * `onResume`), or has been found ended (after `onEnd`).
 *
 * @param {InvigilatorOptions} options
 * @returns {Promise<Invigilator>}
 */
export async function start(options) {
  const client = new Invigilator(options);
  await client.start();
  return client;
}

// --- helpers -----------------------------------------------------------------------------

function defaultStorage() {
  try {
    return typeof localStorage === "undefined" ? null : localStorage;
  } catch {
    return null; // access denied (e.g. storage blocked for the site)
  }
}

/**
 * Parse the server's ISO 8601 time (microseconds are cut to milliseconds for Date.parse).
 *
 * @param {unknown} value
 * @returns {number} Epoch milliseconds, or NaN.
 */
function parseTime(value) {
  if (typeof value !== "string") return NaN;
  return Date.parse(value.replace(/(\.\d{3})\d+/, "$1"));
}

/** A random id for this page's claim (the API's name alphabet). */
function newPageId() {
  try {
    if (typeof crypto !== "undefined" && typeof crypto.randomUUID === "function") return `p-${crypto.randomUUID()}`;
  } catch {
    // not a secure context: fall back below
  }
  return `p-${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 12)}`;
}

function validEntry(entry) {
  return Boolean(entry) && typeof entry === "object" && "value" in entry && Number.isSafeInteger(entry.seq);
}

function sameValue(a, b) {
  return a === b || JSON.stringify(a) === JSON.stringify(b);
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

function call(callback, ...args) {
  if (typeof callback !== "function") return;
  try {
    callback(...args);
  } catch (error) {
    console.error("invigilator: a callback failed", error);
  }
}

/** @returns {Outcome} */
function outcomeOf(session, { byThisPage }) {
  return {
    status: session.status,
    completionMethod: session.completion_method ?? null,
    completedAt: session.completed_at ?? null,
    byThisPage,
    unsaved: {},
    session,
  };
}

/** @returns {Outcome} */
function outcomeOfProblem(problem) {
  return {
    status: problem?.session_status ?? "completed",
    completionMethod: problem?.completion_method ?? null,
    completedAt: problem?.completed_at ?? null,
    byThisPage: false,
    unsaved: {},
    session: null,
  };
}

/** @returns {ResumeInfo} */
function resumeInfo(state, answers, restoredLocal, outcome) {
  return {
    ended: outcome !== null,
    answers,
    restoredLocal,
    sectionsCompleted: Array.isArray(state.sections_completed) ? state.sections_completed : [],
    plannedSections: Array.isArray(state.planned_sections) ? state.planned_sections : null,
    remainingSeconds: outcome ? 0 : Number(state.remaining_seconds) || 0,
    session: state,
    outcome,
    paused: state.paused === true,
    fromPause: false,
  };
}
