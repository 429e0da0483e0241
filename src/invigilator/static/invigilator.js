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
 * - **autosave**: every edit is queued with an increasing `seq`, kept in `localStorage` until the
 *   server acknowledges it (applied, or superseded by a newer save), and sent with retry and
 *   exponential backoff — an answer survives a reload, a crash or a dropped network;
 * - the **connection** as the requests see it (`onConnectionChange`);
 * - **tab close**: `visibilitychange` (hidden) and `pagehide` send a beacon to `/tab-close`
 *   (a reload's first heartbeat cancels it); focus and visibility changes go to `/events`;
 * - **resume**: `start()` reads `/state` and hands the page its answers — the server's, with
 *   any answers still unacknowledged in this browser winning (`onResume`);
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
 * @property {Storage|null} [storage=localStorage] Where unacknowledged answers are kept;
 *   `null` keeps them in memory only.
 * @property {(resume: ResumeInfo) => void} [onResume] The session is running: put `answers`
 *   into the page. Called once, from `start()`.
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
 * @property {object} session The server's `/state` reply, as it came.
 * @property {Outcome|null} outcome When `ended`, how it ended.
 */

/**
 * How a session ended, as `onEnd` receives it.
 *
 * @typedef {object} Outcome
 * @property {string} status "completed" or "abandoned".
 * @property {string|null} completionMethod "manual", "timer_expired", "tab_close", "admin",
 *   "heartbeat_timeout" or "admin_terminated".
 * @property {string|null} completedAt When it ended (ISO 8601, server time).
 * @property {boolean} byThisPage True when this page's `submit()` is what ended it.
 * @property {Object<string, *>} unsaved Answers that never reached the server before the end
 *   (normally empty: `submit()` saves everything first).
 * @property {object|null} session The server's session body when the reply carried one.
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
    /** @private */
    this._storageKey = `invigilator:v1:${this.candidateId}`;

    // Clock: the server's time at a moment of performance.now(), and the deadline.
    /** @private @type {{serverMs: number, perf: number}|null} */
    this._clock = null;
    /** @private */
    this._deadlineMs = NaN;
    /** @private */
    this._lastTick = null;
    /** @private */
    this._expired = false;

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
    /** @private */
    this._beaconSent = false;
    /** @private */
    this._focused = typeof document === "undefined" || document.hasFocus();

    /** @private */
    this._timers = { heartbeat: 0, save: 0, tick: 0, endPoll: 0 };
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
    if (this._outcome || this._stopped) return false;
    for (const [question, value] of Object.entries(answers)) {
      this._pending[question] = { value, seq: this._nextSeq() };
      this._answers[question] = value;
    }
    this._persist();
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
    const body = await this._request("POST", "/sections", { section });
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
    try {
      const body = await this._request("POST", "/complete");
      this._end(outcomeOf(body, { byThisPage: !body.already_ended }));
    } catch (error) {
      if (!this._outcome) throw error;
    }
    return /** @type {Outcome} */ (this._outcome);
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
    return Math.max(0, Math.ceil((this._deadlineMs - now) / 1000));
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
      const outcome = outcomeOf(state, { byThisPage: false });
      this._end(outcome);
      return resumeInfo(state, {}, [], outcome);
    }

    // Answers this browser still holds win over the server's: re-stamp them with a fresh seq
    // (server time based) so the server agrees once they are sent.
    const local = Object.keys(this._pending);
    for (const question of local) this._pending[question].seq = this._nextSeq();
    this._persist();
    const answers = { ...(state.pending_answers ?? {}) };
    for (const question of local) answers[question] = this._pending[question].value;
    this._answers = Object.assign(Object.create(null), answers);

    const resume = resumeInfo(state, answers, local, null);
    this._running = true;
    this._listen();
    call(this._o.onResume, resume);
    this._notifySave();
    this._tick();
    this._timers.tick = setInterval(() => this._tick(), 250);
    void this._heartbeat();
    if (local.length) this._scheduleSave(0);
    return resume;
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
          if (state.status !== "active") outcome = outcomeOf(state, { byThisPage: false });
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
    if (!Number.isNaN(deadlineMs)) {
      if (this._expired && deadlineMs > this._deadlineMs && deadlineMs > this.serverNow()) {
        this._expired = false; // staff extended the time after the countdown reached zero
      }
      this._deadlineMs = deadlineMs;
    }
    if (this._running) this._tick();
  }

  /** @private */
  _tick() {
    if (this._outcome || Number.isNaN(this._deadlineMs) || !this._clock) return;
    const leftMs = this._deadlineMs - this.serverNow();
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
          this._end(outcomeOf(state, { byThisPage: false }));
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
    if (!this._running || this._heartbeatInflight) return;
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
        if (byteLength(JSON.stringify({ answers, seq })) > this._o.maxRequestBytes) {
          throw new InvigilatorError("this answer is too large to save", {
            status: 413,
            code: "payload_too_large",
          });
        }
        const reply = await this._request("PATCH", "/answers", { answers, seq }, { keepalive: hidden });
        const acknowledged = new Set([...(reply.applied ?? []), ...(reply.superseded ?? [])]);
        for (const question of questions) {
          // Forget an answer only if it was not edited again while this save was in flight.
          if (acknowledged.has(question) && this._pending[question]?.seq === sentSeq[question]) {
            delete this._pending[question];
          }
        }
        this._persist();
        this._saveFailures = 0;
        this._lastSavedAt = new Date();
        ok = true;
      } catch (error) {
        if (this._outcome || this._stopped) return false;
        if (error instanceof InvigilatorError && REFUSED_STATUSES.has(error.status)) {
          // Refused as invalid or too large: find the culprit alone, then drop it.
          if (questions.length > 1) {
            this._batchLimit = 1;
          } else {
            const question = questions[0];
            if (this._pending[question]?.seq === sentSeq[question]) delete this._pending[question];
            this._persist();
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
    });
  }

  /** @private */
  _load() {
    if (!this._storage) return;
    try {
      const raw = this._storage.getItem(this._storageKey);
      if (!raw) return;
      const data = JSON.parse(raw);
      if (Number.isSafeInteger(data.lastSeq)) this._lastSeq = data.lastSeq;
      if (data.pending && typeof data.pending === "object") {
        for (const [question, entry] of Object.entries(data.pending)) {
          if (entry && typeof entry === "object" && "value" in entry && Number.isSafeInteger(entry.seq)) {
            this._pending[question] = { value: entry.value, seq: entry.seq };
            this._answers[question] = entry.value;
          }
        }
      }
    } catch {
      // unreadable storage: start empty
    }
  }

  /** @private */
  _persist() {
    if (!this._storage) return;
    try {
      this._storage.setItem(this._storageKey, JSON.stringify({ lastSeq: this._lastSeq, pending: this._pending }));
    } catch {
      // quota exceeded or storage disabled: the queue lives on in memory
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
      const body = JSON.stringify({ token: this._token });
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
    this._request("POST", "/events", { type }, { keepalive: true }).catch(() => {});
  }

  /** @private */
  _end(outcome) {
    if (this._outcome) return;
    outcome.unsaved = Object.fromEntries(Object.entries(this._pending).map(([q, e]) => [q, e.value]));
    this._outcome = outcome;
    this._teardown();
    this._pending = Object.create(null);
    if (this._storage) {
      try {
        this._storage.removeItem(this._storageKey);
      } catch {
        // nothing to clean up then
      }
    }
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
  };
}
