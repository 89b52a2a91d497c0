// AEGIS gateway dashboard. Plain ES2020, no dependencies, no build step.
// Served under a strict CSP (script-src 'self'; style-src 'self'): no inline scripts, no style
// attributes in markup, no innerHTML. Every server-provided string goes through textContent or
// setAttribute on a fixed attribute name.
'use strict';

(() => {
  const TOKEN_KEY = 'aegis.token';
  const STAGES = ['advertise', 'share', 'masked', 'consistency', 'unmask'];
  const JOB_STATUSES = ['queued', 'running', 'completed', 'failed', 'cancelled'];
  const FAST_MS = 2000; // jobs list + selected job
  const SLOW_MS = 5000; // health, clients, audit
  const REQUEST_TIMEOUT_MS = 15000;
  const AUDIT_KEEP = 50;
  const AUDIT_MAX_PAGES_PER_TICK = 10;
  const SVG_NS = 'http://www.w3.org/2000/svg';

  const state = {
    token: null,
    session: 0, // bumped on sign-in / sign-out / 401: late answers of an old session are dropped
    me: null,
    jobs: [],
    jobsSig: null,
    selectedId: null,
    userSelected: false,
    detail: null, // last job object from GET /v1/jobs/{id}
    detailSig: null,
    historySig: null,
    forbidden: { detail: false, clients: false, audit: false },
    clientsSig: null,
    audit: new Map(), // seq -> entry
    auditMaxSeq: null,
    auditSig: null,
    cancelArmedUntil: 0,
    loadedOnce: false,
  };

  // ---------------------------------------------------------------- helpers

  const $ = (sel, root = document) => root.querySelector(sel);

  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    setAttrs(el, attrs);
    appendAll(el, children);
    return el;
  }

  function s(tag, attrs, ...children) {
    const el = document.createElementNS(SVG_NS, tag);
    setAttrs(el, attrs);
    appendAll(el, children);
    return el;
  }

  function setAttrs(el, attrs) {
    if (!attrs) return;
    for (const [k, v] of Object.entries(attrs)) {
      if (v === null || v === undefined || v === false) continue;
      if (k === 'class') el.setAttribute('class', v);
      else if (k === 'text') el.textContent = String(v);
      else if (k === 'dataset') Object.assign(el.dataset, v);
      else el.setAttribute(k, v === true ? '' : String(v));
    }
  }

  function appendAll(el, children) {
    for (const c of children.flat()) {
      if (c === null || c === undefined || c === false) continue;
      el.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
  }

  const isNum = (v) => typeof v === 'number' && Number.isFinite(v);
  const sum = (a) => (Array.isArray(a) ? a.reduce((t, v) => t + (isNum(v) ? v : 0), 0) : 0);
  const dash = '—';

  function pad2(n) { return String(n).padStart(2, '0'); }

  function fmtTime(iso) {
    if (!iso) return dash;
    const d = new Date(iso);
    if (Number.isNaN(d.getTime())) return String(iso);
    return `${d.getFullYear()}-${pad2(d.getMonth() + 1)}-${pad2(d.getDate())} ` +
      `${pad2(d.getHours())}:${pad2(d.getMinutes())}:${pad2(d.getSeconds())}`;
  }

  function timeCell(iso) {
    return h('td', { class: 'nowrap', title: iso || null }, fmtTime(iso));
  }

  function fmtPct(v) { return isNum(v) ? `${(v * 100).toFixed(1)}%` : dash; }
  function fmtRate(v) { return isNum(v) ? `${+(v * 100).toFixed(1)}%` : dash; }
  function fmtLoss(v) { return isNum(v) ? v.toFixed(3) : dash; }
  function fmtSecs(v) { return isNum(v) ? (v < 10 ? v.toFixed(2) : v.toFixed(1)) : dash; }
  function fmtNum(v) { return isNum(v) ? String(v) : dash; }

  function fmtAxis(v) {
    if (v === 0) return '0';
    const a = Math.abs(v);
    if (a >= 100) return v.toFixed(0);
    if (a >= 10) return v.toFixed(1).replace(/\.0$/, '');
    if (a >= 1) return v.toFixed(2).replace(/\.?0+$/, '');
    return v.toPrecision(2).replace(/\.?0+$/, '');
  }

  // A "nice" step (1, 2, 2.5, 5 × 10^k) at least `raw`.
  function niceStep(raw) {
    if (!(raw > 0)) return 1;
    const pow = Math.pow(10, Math.floor(Math.log10(raw)));
    for (const m of [1, 2, 2.5, 5, 10]) if (raw <= m * pow * 1.0000001) return m * pow;
    return 10 * pow;
  }

  function statusBadge(status) {
    const known = JOB_STATUSES.includes(status) ? status : 'unknown';
    return h('span', { class: `badge badge-${known}` }, h('span', { class: 'badge-dot', 'aria-hidden': 'true' }), String(status ?? 'unknown'));
  }

  function plainBadge(text, tone) {
    return h('span', { class: `badge badge-${tone}` }, String(text));
  }

  function outcomeTone(outcome) {
    const o = String(outcome ?? '').toLowerCase();
    if (/^(ok|success|succeeded|allowed|granted|accepted|done)$/.test(o)) return 'completed';
    if (/(den|fail|error|refus|forbid|reject|invalid|unauthor)/.test(o)) return 'failed';
    return 'queued';
  }

  function errorText(err) {
    if (err instanceof HttpError) return err.message;
    if (err && err.name === 'AbortError') return 'the gateway did not answer in time';
    return 'the gateway is unreachable';
  }

  // Section-level message (one <p class="section-msg"> per section).
  function sectionMsg(section, text, tone = 'error') {
    const p = $('.section-msg', section);
    if (!p) return;
    if (!text) { p.hidden = true; p.textContent = ''; return; }
    p.textContent = text;
    p.className = `section-msg section-msg-${tone}`;
    p.hidden = false;
  }

  // ---------------------------------------------------------------- API

  class HttpError extends Error {
    constructor(status, detail) {
      super(detail ? `${status}: ${detail}` : `HTTP ${status}`);
      this.status = status;
      this.detail = detail;
    }
  }

  class StaleError extends Error {}

  function detailOf(body) {
    if (!body) return '';
    const d = body.detail;
    if (typeof d === 'string') return d;
    if (Array.isArray(d)) return d.map((e) => (e && e.msg ? String(e.msg) : JSON.stringify(e))).join('; ');
    return '';
  }

  async function api(path, { method = 'GET', raw = false, timeout = REQUEST_TIMEOUT_MS } = {}) {
    const session = state.session;
    const token = state.token;
    if (!token) throw new StaleError('signed out');
    const ctl = new AbortController();
    const timer = timeout ? setTimeout(() => ctl.abort(), timeout) : null;
    let res;
    try {
      res = await fetch(path, {
        method,
        headers: { Authorization: `Bearer ${token}`, Accept: raw ? '*/*' : 'application/json' },
        cache: 'no-store',
        credentials: 'same-origin',
        signal: ctl.signal,
      });
    } finally {
      if (timer) clearTimeout(timer);
    }
    if (session !== state.session) throw new StaleError('stale');
    if (res.status === 401) {
      tokenRefused();
      throw new StaleError('token refused');
    }
    if (!res.ok) {
      let body = null;
      try { body = await res.json(); } catch (_) { /* not JSON */ }
      throw new HttpError(res.status, detailOf(body) || res.statusText);
    }
    if (raw) return res;
    if (res.status === 204) return null;
    const data = await res.json();
    if (session !== state.session) throw new StaleError('stale');
    return data;
  }

  // ---------------------------------------------------------------- pollers

  // Runs `fn` every `ms`; a tick is skipped while the previous one is still in flight.
  function poller(fn, ms) {
    let busy = false;
    let timer = null;
    async function tick() {
      if (busy || !state.token) return;
      busy = true;
      try { await fn(); } catch (e) { if (!(e instanceof StaleError)) console.warn('refresh failed', e); } finally { busy = false; }
    }
    return {
      tick,
      start() { if (!timer) timer = setInterval(() => { if (!document.hidden) tick(); }, ms); },
      stop() { clearInterval(timer); timer = null; },
    };
  }

  const fast = poller(refreshJobs, FAST_MS);
  const slow = poller(refreshSlow, SLOW_MS);

  // ---------------------------------------------------------------- session

  function readHashToken() {
    const hash = location.hash || '';
    if (!hash.startsWith('#')) return null;
    const params = new URLSearchParams(hash.slice(1));
    if (!params.has('token')) return null;
    const token = (params.get('token') || '').trim();
    history.replaceState(null, '', location.pathname + location.search);
    return token || null;
  }

  function showSignIn(refused) {
    fast.stop();
    slow.stop();
    $('#app').hidden = true;
    $('#whoami').hidden = true;
    $('#signout').hidden = true;
    $('#signin').hidden = false;
    $('#signin-error').hidden = !refused;
    const input = $('#token-input');
    input.value = '';
    input.focus();
  }

  function tokenRefused() {
    state.session++;
    state.token = null;
    sessionStorage.removeItem(TOKEN_KEY);
    clearData();
    showSignIn(true);
    markLoaded();
  }

  function signOut() {
    state.session++;
    state.token = null;
    sessionStorage.removeItem(TOKEN_KEY);
    clearData();
    showSignIn(false);
  }

  function clearData() {
    state.me = null;
    state.jobs = [];
    state.jobsSig = null;
    state.selectedId = null;
    state.userSelected = false;
    state.detail = null;
    state.detailSig = null;
    state.historySig = null;
    state.forbidden = { detail: false, clients: false, audit: false };
    state.clientsSig = null;
    state.audit = new Map();
    state.auditMaxSeq = null;
    state.auditSig = null;
    for (const id of ['jobs-body', 'rounds-body', 'clients-body', 'audit-body', 'detail-spec', 'chart-metrics', 'chart-cohort']) {
      $(`#${id}`).replaceChildren();
    }
    for (const sec of document.querySelectorAll('section')) sectionMsg(sec, null);
    $('#whoami-name').textContent = '';
    $('#whoami-role').textContent = '';
    $('#jobs-meta').textContent = '';
    renderDetailShell(null);
  }

  function markLoaded() {
    if (!state.loadedOnce) {
      state.loadedOnce = true;
      document.body.dataset.loaded = 'true';
    }
  }

  async function startSession(token) {
    state.session++;
    const session = state.session;
    state.token = token;
    sessionStorage.setItem(TOKEN_KEY, token);
    clearData();
    $('#signin').hidden = true;
    $('#app').hidden = false;
    $('#signout').hidden = false;
    // whoami first: a refused token then costs one request, and sections the role may not see
    // are not asked for at all (each of those would be a 403 in the console and the audit log).
    await loadWhoami();
    if (session !== state.session) return; // token refused or signed out meanwhile
    applyRole();
    // Intervals run from now on; a tick that finds the previous one still in flight is skipped.
    fast.start();
    slow.start();
    await Promise.allSettled([fast.tick(), slow.tick()]);
    if (session !== state.session) return;
    markLoaded();
  }

  async function loadWhoami() {
    try {
      const me = await api('/v1/whoami');
      state.me = me;
      $('#whoami-name').textContent = me && me.name ? String(me.name) : 'unknown';
      const role = $('#whoami-role');
      role.textContent = me && me.role ? String(me.role) : '';
      role.className = `role role-${['admin', 'scientist', 'client'].includes(me && me.role) ? me.role : 'other'}`;
      const bits = [];
      if (me && me.client_id) bits.push(`client ${me.client_id}`);
      if (me && me.expires_at) bits.push(`token expires ${fmtTime(me.expires_at)}`);
      $('#whoami').title = bits.join(' · ');
      $('#whoami').hidden = false;
    } catch (e) {
      if (!(e instanceof StaleError)) console.warn('whoami failed', e);
    }
  }

  // Roles per docs/api.md: admin sees everything; scientist no clients/audit; client lists jobs only.
  // Any other 403 is still handled where it happens.
  function roleForbidsDetail() { return !!(state.me && state.me.role === 'client'); }

  function applyRole() {
    const role = state.me && state.me.role;
    if (role === 'scientist' || role === 'client') {
      forbidSection($('#clients'), 'clients');
      forbidSection($('#audit'), 'audit');
    }
    if (role === 'client') state.forbidden.detail = true;
  }

  // ---------------------------------------------------------------- jobs list

  async function refreshJobs() {
    const section = $('#jobs');
    let jobs;
    try {
      jobs = await api('/v1/jobs');
    } catch (e) {
      if (e instanceof StaleError) throw e;
      if (e instanceof HttpError && e.status === 403) {
        sectionMsg(section, 'Your role may not see this.', 'info');
        $('#jobs-table').hidden = true;
      } else {
        sectionMsg(section, `Could not refresh the jobs: ${errorText(e)}. Retrying…`);
      }
      return;
    }
    sectionMsg(section, null);
    $('#jobs-table').hidden = false;
    state.jobs = Array.isArray(jobs) ? jobs : [];
    renderJobs();
    const now = new Date();
    $('#jobs-meta').textContent = `${state.jobs.length} job${state.jobs.length === 1 ? '' : 's'} · updated ${pad2(now.getHours())}:${pad2(now.getMinutes())}:${pad2(now.getSeconds())}`;
    chooseSelection();
    if (state.forbidden.detail) {
      // No detail for this role: keep the header of the selected job in step with the list.
      renderDetailShell(state.jobs.find((j) => j.id === state.selectedId) || null);
      return;
    }
    await refreshDetail();
  }

  function chooseSelection() {
    const ids = new Set(state.jobs.map((j) => j.id));
    if (state.userSelected && ids.has(state.selectedId)) return;
    state.userSelected = false;
    const running = state.jobs.find((j) => j.status === 'running');
    const pick = running || state.jobs[0] || null;
    const id = pick ? pick.id : null;
    if (id !== state.selectedId) selectJob(id, false);
  }

  function renderJobs() {
    const sig = JSON.stringify(state.jobs.map((j) => [j.id, j.name, j.owner, j.status, j.rounds_done, j.rounds_total, j.created_at]));
    if (sig !== state.jobsSig) {
      state.jobsSig = sig;
      const rows = state.jobs.map((j) => {
        const done = isNum(j.rounds_done) ? j.rounds_done : 0;
        const total = isNum(j.rounds_total) ? j.rounds_total : 0;
        const bar = h('div', { class: 'mini-bar' });
        bar.style.width = `${total > 0 ? Math.min(100, (100 * done) / total) : 0}%`; // CSSOM, allowed by style-src 'self'
        return h('tr', {
          class: 'job-row',
          tabindex: '0',
          dataset: { jobId: String(j.id), status: String(j.status) },
        },
        h('td', { class: 'mono col-id' }, String(j.id)),
        h('td', { class: 'strong' }, String(j.name ?? ''), h('span', { class: 'sub-id mono' }, String(j.id))),
        h('td', { class: 'col-owner' }, String(j.owner ?? '')),
        h('td', null, statusBadge(j.status)),
        h('td', { class: 'nowrap' },
          h('span', { class: 'rounds-text' }, `${done}/${total}`),
          h('span', { class: 'mini-progress', 'aria-hidden': 'true' }, bar)),
        h('td', { class: 'nowrap col-created', title: j.created_at || null }, fmtTime(j.created_at)));
      });
      $('#jobs-body').replaceChildren(...rows);
      $('#jobs-empty').hidden = state.jobs.length > 0;
    }
    markSelectedRow();
  }

  function markSelectedRow() {
    for (const tr of document.querySelectorAll('#jobs-body tr')) {
      const sel = tr.dataset.jobId === state.selectedId;
      tr.classList.toggle('selected', sel);
      tr.setAttribute('aria-selected', sel ? 'true' : 'false');
    }
  }

  function selectJob(id, byUser) {
    if (byUser) state.userSelected = true;
    if (id === state.selectedId) return;
    state.selectedId = id;
    state.detail = null;
    state.detailSig = null;
    state.historySig = null;
    state.forbidden.detail = roleForbidsDetail();
    state.cancelArmedUntil = 0;
    markSelectedRow();
    renderDetailShell(state.jobs.find((j) => j.id === id) || null);
  }

  function onJobsClick(ev) {
    const tr = ev.target.closest('tr[data-job-id]');
    if (!tr) return;
    selectJob(tr.dataset.jobId, true);
    refreshDetail();
  }

  function onJobsKey(ev) {
    if (ev.key !== 'Enter' && ev.key !== ' ') return;
    const tr = ev.target.closest('tr[data-job-id]');
    if (!tr) return;
    ev.preventDefault();
    selectJob(tr.dataset.jobId, true);
    refreshDetail();
  }

  // ---------------------------------------------------------------- job detail

  let detailBusy = false;
  let detailAgain = false;

  async function refreshDetail() {
    if (detailBusy) { detailAgain = true; return; }
    detailBusy = true;
    try {
      do {
        detailAgain = false;
        await fetchDetailOnce();
      } while (detailAgain);
    } finally {
      detailBusy = false;
    }
  }

  async function fetchDetailOnce() {
    const id = state.selectedId;
    const section = $('#job-detail');
    if (!id || state.forbidden.detail) return;
    let job;
    try {
      job = await api(`/v1/jobs/${encodeURIComponent(id)}`);
    } catch (e) {
      if (e instanceof StaleError) throw e;
      if (id !== state.selectedId) return;
      if (e instanceof HttpError && e.status === 403) {
        state.forbidden.detail = true;
        sectionMsg(section, 'Your role may not see this.', 'info');
        $('#detail-body').hidden = true;
        $('#btn-cancel').hidden = true;
        $('#btn-download').hidden = true;
      } else {
        sectionMsg(section, `Could not refresh this job: ${errorText(e)}. Retrying…`);
      }
      return;
    }
    if (id !== state.selectedId || !job) return;
    sectionMsg(section, null);
    state.detail = job;
    renderDetail(job);
  }

  // The parts that can be drawn from the list entry alone (shown at once on selection).
  function renderDetailShell(job) {
    const section = $('#job-detail');
    if (!job) {
      delete section.dataset.jobId;
      delete section.dataset.status;
      $('#detail-title').textContent = 'Job';
      $('#detail-id').textContent = '';
      $('#detail-status').replaceChildren();
      delete $('#detail-status').dataset.sig;
      $('#detail-placeholder').hidden = false;
      $('#detail-body').hidden = true;
      $('#btn-cancel').hidden = true;
      $('#btn-download').hidden = true;
      sectionMsg(section, null);
      return;
    }
    section.dataset.jobId = String(job.id);
    section.dataset.status = String(job.status);
    $('#detail-title').textContent = String(job.name || 'Job');
    $('#detail-id').textContent = String(job.id);
    const statusSig = `badge:${job.status}`;
    const holder = $('#detail-status');
    if (holder.dataset.sig !== statusSig) {
      holder.dataset.sig = statusSig;
      holder.replaceChildren(statusBadge(job.status));
    }
    $('#detail-placeholder').hidden = true;
    if (state.forbidden.detail) sectionMsg(section, 'Your role may not see this.', 'info');
    if (!state.detail) {
      // Nothing detailed yet for this job: show empty charts rather than the previous job's.
      $('#detail-spec').replaceChildren();
      $('#rounds-body').replaceChildren();
      renderMetricsChart($('#chart-metrics'), null);
      renderCohortChart($('#chart-cohort'), null);
      $('#rounds-empty').hidden = true;
      $('#detail-error').hidden = true;
      setProgress(job);
      $('#detail-body').hidden = state.forbidden.detail;
    }
    updateActions(job);
  }

  function setProgress(job) {
    const done = isNum(job.rounds_done) ? job.rounds_done : 0;
    const total = isNum(job.rounds_total) ? job.rounds_total : 0;
    $('#detail-progress-bar').style.width = `${total > 0 ? Math.min(100, (100 * done) / total) : 0}%`;
    $('#detail-progress-text').textContent = `${done} of ${total} rounds · owner ${job.owner ?? dash} · created ${fmtTime(job.created_at)}`;
  }

  function renderDetail(job) {
    renderDetailShell(job);
    $('#detail-body').hidden = false;
    setProgress(job);

    const err = $('#detail-error');
    if (job.error) { err.textContent = `Error: ${String(job.error)}`; err.hidden = false; } else { err.hidden = true; }

    const specSig = JSON.stringify(job.spec ?? null);
    if (specSig !== state.detailSig) {
      state.detailSig = specSig;
      renderSpec(job.spec || {});
    }

    const history = Array.isArray(job.history) ? job.history : [];
    const histSig = JSON.stringify([job.rounds_total, history]);
    if (histSig !== state.historySig) {
      state.historySig = histSig;
      renderMetricsChart($('#chart-metrics'), history, job.rounds_total);
      renderCohortChart($('#chart-cohort'), history, job.rounds_total);
      renderRounds(history);
    }
  }

  function renderSpec(spec) {
    const items = [];
    const model = spec.model || {};
    const shape = [];
    if (isNum(model.inputs) && isNum(model.classes)) shape.push(`${model.inputs} inputs → ${model.classes} classes`);
    for (const [k, v] of Object.entries(model)) {
      if (k === 'kind' || ((k === 'inputs' || k === 'classes') && shape.length)) continue;
      shape.push(`${k} ${Array.isArray(v) ? v.join('×') : typeof v === 'object' && v !== null ? JSON.stringify(v) : String(v)}`);
    }
    items.push(['Model', model.kind ? String(model.kind) : dash, shape.join(' · ')]);
    items.push(['Rounds', fmtNum(spec.rounds), null]);
    items.push(['Cohort', isNum(spec.cohort_size) ? `${spec.cohort_size} clients per round` : dash, null]);
    items.push(['Min clients', fmtNum(spec.min_clients), 'survivors needed to finish a round']);
    const sa = spec.secagg || {};
    const saBits = [];
    if (isNum(sa.corrupt_rate)) saBits.push(`corrupt ${fmtRate(sa.corrupt_rate)}`);
    if (isNum(sa.max_weight)) saBits.push(`max weight ${sa.max_weight}`);
    items.push(['SecAgg', `dropout ${fmtRate(sa.dropout_rate)} · clip ${fmtNum(sa.clip)}`, saBits.join(' · ')]);
    const tr = spec.train || {};
    items.push(['Training', `${fmtNum(tr.epochs)} epochs · batch ${fmtNum(tr.batch_size)}`, isNum(tr.learning_rate) ? `learning rate ${tr.learning_rate}` : null]);
    $('#detail-spec').replaceChildren(...items.map(([k, v, sub]) => h('div', { class: 'spec-item' },
      h('dt', null, k),
      h('dd', null, h('span', { class: k === 'Model' ? 'mono' : null }, v), sub ? h('span', { class: 'spec-sub' }, sub) : null))));
  }

  function renderRounds(history) {
    const rows = history.slice().reverse().map((r) => {
      const drops = Array.isArray(r.dropped) ? r.dropped : [];
      const dropTitle = STAGES.map((st, i) => `${st} ${isNum(drops[i]) ? drops[i] : 0}`).join(', ');
      const outcome = r.completed
        ? plainBadge('completed', 'completed')
        : h('span', { title: r.abort_reason ? String(r.abort_reason) : null }, plainBadge('aborted', 'failed'),
          r.abort_reason ? h('span', { class: 'abort-reason' }, String(r.abort_reason)) : null);
      return h('tr', { dataset: { round: String(r.round) } },
        h('td', { class: 'num strong' }, fmtNum(r.round)),
        h('td', null, outcome),
        h('td', { class: 'num' }, fmtNum(r.sampled)),
        h('td', { class: 'num' }, fmtNum(r.survived)),
        h('td', { class: 'num', title: dropTitle }, String(sum(drops))),
        h('td', { class: 'num' }, fmtSecs(r.seconds)),
        h('td', { class: 'num' }, fmtPct(r.accuracy)),
        h('td', { class: 'num' }, fmtLoss(r.loss)));
    });
    $('#rounds-body').replaceChildren(...rows);
    $('#rounds-empty').hidden = rows.length > 0;
    $('#rounds-table').hidden = rows.length === 0;
  }

  function updateActions(job) {
    const cancel = $('#btn-cancel');
    const canCancel = job && (job.status === 'queued' || job.status === 'running') && !state.forbidden.detail;
    cancel.hidden = !canCancel;
    if (canCancel && state.cancelArmedUntil && Date.now() > state.cancelArmedUntil) disarmCancel();
    $('#btn-download').hidden = !job || state.forbidden.detail;
  }

  function disarmCancel() {
    state.cancelArmedUntil = 0;
    const b = $('#btn-cancel');
    b.textContent = 'Cancel job';
    b.classList.remove('armed');
  }

  async function onCancel() {
    const id = state.selectedId;
    if (!id) return;
    const b = $('#btn-cancel');
    if (!state.cancelArmedUntil || Date.now() > state.cancelArmedUntil) {
      // First click arms the button; a second click within 5 s cancels.
      state.cancelArmedUntil = Date.now() + 5000;
      b.textContent = 'Confirm cancel';
      b.classList.add('armed');
      setTimeout(() => { if (state.cancelArmedUntil && Date.now() > state.cancelArmedUntil) disarmCancel(); }, 5100);
      return;
    }
    disarmCancel();
    b.disabled = true;
    const section = $('#job-detail');
    try {
      const job = await api(`/v1/jobs/${encodeURIComponent(id)}/cancel`, { method: 'POST' });
      sectionMsg(section, `Job ${id} cancelled.`, 'info');
      if (job && job.id === state.selectedId) {
        state.jobs = state.jobs.map((j) => (j.id === job.id ? { ...j, ...job, history: [] } : j));
        renderJobs();
        if (Array.isArray(job.history) && job.history.length) renderDetail(job);
        else renderDetailShell(job);
      }
      fast.tick();
    } catch (e) {
      if (e instanceof StaleError) return;
      const why = e instanceof HttpError && e.status === 409 ? 'the job has already finished'
        : e instanceof HttpError && e.status === 403 ? 'your role may not cancel jobs' : errorText(e);
      sectionMsg(section, `Could not cancel ${id}: ${why}.`);
    } finally {
      b.disabled = false;
    }
  }

  async function onDownload() {
    const id = state.selectedId;
    if (!id) return;
    const b = $('#btn-download');
    const section = $('#job-detail');
    b.disabled = true;
    b.textContent = 'Downloading…';
    try {
      const res = await api(`/v1/jobs/${encodeURIComponent(id)}/model`, { raw: true, timeout: 0 });
      const blob = await res.blob();
      const url = URL.createObjectURL(blob);
      const a = h('a', { href: url, download: `${id}.safetensors`, class: 'visually-hidden' });
      document.body.append(a);
      a.click();
      a.remove();
      setTimeout(() => URL.revokeObjectURL(url), 10000);
    } catch (e) {
      if (e instanceof StaleError) return;
      const why = e instanceof HttpError && e.status === 403 ? 'your role may not download models' : errorText(e);
      sectionMsg(section, `Could not download the model of ${id}: ${why}.`);
    } finally {
      b.disabled = false;
      b.textContent = 'Download model';
    }
  }

  // ---------------------------------------------------------------- charts

  // The drawing is sized to the element's own width (user units = CSS pixels) so text stays
  // legible on phones; a ResizeObserver redraws when the width changes.
  let CHART_W = 600;
  const CHART_H = 260;
  const M = { l: 50, r: 54, t: 36, b: 40 };

  function chartFrame(svg, label, args) {
    svg.__chartArgs = args;
    const w = Math.round(svg.getBoundingClientRect().width);
    CHART_W = w > 0 ? Math.max(300, Math.min(760, w)) : 600;
    svg.__chartW = w;
    svg.setAttribute('viewBox', `0 0 ${CHART_W} ${CHART_H}`);
    svg.setAttribute('preserveAspectRatio', 'xMidYMid meet');
    svg.setAttribute('aria-label', label);
  }

  function emptyChart(text) {
    return s('text', { x: CHART_W / 2, y: CHART_H / 2, 'text-anchor': 'middle', class: 'chart-empty' }, text);
  }

  function legend(items) {
    // items: [[label, cssClass, kind]] laid out right-aligned at the top.
    const g = s('g', { class: 'legend' });
    let x = 12;
    for (const [label, cls, kind] of items) {
      if (kind === 'line') {
        g.append(s('line', { x1: x, y1: 14, x2: x + 18, y2: 14, class: `line ${cls}` }));
        g.append(s('circle', { cx: x + 9, cy: 14, r: 3.2, class: `dot ${cls}` }));
      } else {
        g.append(s('rect', { x, y: 8, width: 12, height: 12, rx: 2, class: `bar ${cls}` }));
      }
      g.append(s('text', { x: x + 24, y: 18, class: 'legend-text' }, label));
      x += 24 + label.length * 6.4 + 16;
    }
    return g;
  }

  // The x axis spans rounds 1..max(rounds_total, last round) so it stays put while a job runs.
  function roundDomain(history, total) {
    const last = Math.max(0, ...history.map((r, i) => roundNo(r, i)));
    return Math.max(1, last, isNum(total) ? total : 0);
  }

  function roundNo(r, i) { return isNum(r.round) && r.round >= 1 ? r.round : i + 1; }

  function xAxis(g, domain, xOf, plotBottom) {
    const maxLabels = Math.max(4, Math.floor((CHART_W - M.l - M.r) / 30));
    const every = domain <= maxLabels ? 1 : Math.ceil(niceStep(domain / maxLabels));
    g.append(s('line', { x1: M.l, y1: plotBottom, x2: CHART_W - M.r, y2: plotBottom, class: 'axis' }));
    for (let rn = 1; rn <= domain; rn++) {
      if (rn % every !== 0 && !(rn === 1 && every >= 4)) continue;
      const x = xOf(rn);
      g.append(s('line', { x1: x, y1: plotBottom, x2: x, y2: plotBottom + 4, class: 'axis' }));
      g.append(s('text', { x, y: plotBottom + 16, 'text-anchor': 'middle', class: 'tick' }, String(rn)));
    }
    g.append(s('text', { x: M.l + (CHART_W - M.l - M.r) / 2, y: CHART_H - 4, 'text-anchor': 'middle', class: 'axis-title' }, 'Round'));
  }

  function renderMetricsChart(svg, history, total) {
    chartFrame(svg, 'Accuracy and loss per round', [renderMetricsChart, history, total]);
    const nodes = [legend([['Accuracy (left axis)', 'series-acc', 'line'], ['Loss (right axis)', 'series-loss', 'line']])];
    if (!history || history.length === 0) {
      nodes.push(emptyChart(history ? 'No rounds yet' : 'Loading…'));
      svg.replaceChildren(...nodes);
      return;
    }
    const pw = CHART_W - M.l - M.r;
    const ph = CHART_H - M.t - M.b;
    const domain = roundDomain(history, total);
    const slot = pw / domain;
    const xOf = (rn) => M.l + slot * (rn - 0.5);
    const bottom = M.t + ph;
    const losses = history.map((r) => r.loss).filter(isNum);
    const lossStep = niceStep(Math.max(...losses.map(Math.abs), 0) / 4 || 0.25);
    const lossMax = lossStep * 4;
    const accY = (v) => M.t + ph * (1 - Math.max(0, Math.min(1, v)));
    const lossY = (v) => M.t + ph * (1 - Math.max(0, Math.min(lossMax, v)) / lossMax);

    const axes = s('g', { class: 'axes' });
    for (let k = 0; k <= 4; k++) {
      const y = M.t + ph * (1 - k / 4);
      axes.append(s('line', { x1: M.l, y1: y, x2: CHART_W - M.r, y2: y, class: k === 0 ? 'axis' : 'grid' }));
      axes.append(s('text', { x: M.l - 8, y: y + 4, 'text-anchor': 'end', class: 'tick tick-acc' }, `${k * 25}%`));
      axes.append(s('text', { x: CHART_W - M.r + 8, y: y + 4, 'text-anchor': 'start', class: 'tick tick-loss' }, fmtAxis(lossStep * k)));
    }
    xAxis(axes, domain, xOf, bottom);
    axes.append(s('text', { x: 14, y: M.t + ph / 2, 'text-anchor': 'middle', class: 'axis-title', transform: `rotate(-90 14 ${M.t + ph / 2})` }, 'Accuracy'));
    axes.append(s('text', { x: CHART_W - 12, y: M.t + ph / 2, 'text-anchor': 'middle', class: 'axis-title', transform: `rotate(90 ${CHART_W - 12} ${M.t + ph / 2})` }, 'Loss'));
    nodes.push(axes);

    const series = [
      ['accuracy', 'series-acc', accY, (v) => `accuracy ${fmtPct(v)}`],
      ['loss', 'series-loss', lossY, (v) => `loss ${fmtLoss(v)}`],
    ];
    for (const [key, cls, yOf, label] of series) {
      // Null values are skipped: the line breaks there instead of inventing a value.
      let d = '';
      let pen = false;
      history.forEach((r, i) => {
        const v = r[key];
        if (!isNum(v)) { pen = false; return; }
        d += `${pen ? 'L' : 'M'}${xOf(roundNo(r, i)).toFixed(1)} ${yOf(v).toFixed(1)} `;
        pen = true;
      });
      const g = s('g', { class: `series ${cls}`, dataset: { series: key } });
      if (d) g.append(s('path', { d: d.trim(), class: `line ${cls}` }));
      history.forEach((r, i) => {
        const v = r[key];
        if (!isNum(v)) return;
        g.append(s('circle', { cx: xOf(roundNo(r, i)).toFixed(1), cy: yOf(v).toFixed(1), r: domain > 40 ? 2 : 3.5, class: `dot ${cls}` },
          s('title', null, `Round ${r.round}: ${label(v)}`)));
      });
      nodes.push(g);
    }
    svg.replaceChildren(...nodes);
  }

  function renderCohortChart(svg, history, total) {
    chartFrame(svg, 'Survivors and dropouts per round', [renderCohortChart, history, total]);
    const nodes = [legend([['Survived', 'series-ok', 'bar'], ['Dropped', 'series-drop', 'bar'], ['Aborted round', 'series-abort', 'bar']])];
    if (!history || history.length === 0) {
      nodes.push(emptyChart(history ? 'No rounds yet' : 'Loading…'));
      svg.replaceChildren(...nodes);
      return;
    }
    const pw = CHART_W - M.l - M.r;
    const ph = CHART_H - M.t - M.b;
    const domain = roundDomain(history, total);
    const slot = pw / domain;
    const xOf = (rn) => M.l + slot * (rn - 0.5);
    const bottom = M.t + ph;
    const totals = history.map((r) => (isNum(r.survived) ? r.survived : 0) + sum(r.dropped));
    const peak = Math.max(1, ...totals, ...history.map((r) => (isNum(r.sampled) ? r.sampled : 0)));
    const step = Math.max(1, Math.ceil(niceStep(peak / 4)));
    const top = step * Math.ceil(peak / step);
    const yOf = (v) => M.t + ph * (1 - v / top);

    const axes = s('g', { class: 'axes' });
    for (let v = 0; v <= top + 1e-9; v += step) {
      const y = yOf(v);
      axes.append(s('line', { x1: M.l, y1: y, x2: CHART_W - M.r, y2: y, class: v === 0 ? 'axis' : 'grid' }));
      axes.append(s('text', { x: M.l - 8, y: y + 4, 'text-anchor': 'end', class: 'tick' }, String(v)));
    }
    xAxis(axes, domain, xOf, bottom);
    axes.append(s('text', { x: 14, y: M.t + ph / 2, 'text-anchor': 'middle', class: 'axis-title', transform: `rotate(-90 14 ${M.t + ph / 2})` }, 'Clients'));
    nodes.push(axes);

    const bw = Math.max(1.5, Math.min(40, slot * 0.62));
    const bars = s('g', { class: 'bars' });
    history.forEach((r, i) => {
      const survived = isNum(r.survived) ? r.survived : 0;
      const drops = Array.isArray(r.dropped) ? r.dropped : [];
      const dropped = sum(drops);
      const rn = roundNo(r, i);
      const x = xOf(rn) - bw / 2;
      const perStage = STAGES.map((st, k) => `${st} ${isNum(drops[k]) ? drops[k] : 0}`).join(', ');
      const title = `Round ${r.round}${r.completed ? '' : ' (aborted' + (r.abort_reason ? `: ${r.abort_reason}` : '') + ')'}\n` +
        `sampled ${fmtNum(r.sampled)}, survived ${survived}, dropped ${dropped}\n` +
        `drops per stage: ${perStage}`;
      const g = s('g', { class: `bar-group${r.completed ? '' : ' aborted'}`, dataset: { round: String(r.round) } },
        s('title', null, title),
        s('rect', { x: M.l + slot * (rn - 1), y: M.t, width: slot, height: ph, class: 'hover-band' }));
      const ySurv = yOf(survived);
      if (survived > 0) g.append(s('rect', { x, y: ySurv, width: bw, height: bottom - ySurv, class: `bar ${r.completed ? 'series-ok' : 'series-abort'}` }));
      if (dropped > 0) {
        const yDrop = yOf(survived + dropped);
        g.append(s('rect', { x, y: yDrop, width: bw, height: ySurv - yDrop, class: 'bar series-drop' }));
      }
      if (slot >= 24) {
        g.append(s('text', { x: xOf(rn), y: yOf(survived + dropped) - 5, 'text-anchor': 'middle', class: 'bar-label' },
          dropped > 0 ? `${survived}+${dropped}` : String(survived)));
      }
      bars.append(g);
    });
    nodes.push(bars);
    svg.replaceChildren(...nodes);
  }

  function watchChartSizes() {
    if (typeof ResizeObserver !== 'function') return;
    const ro = new ResizeObserver((entries) => {
      for (const e of entries) {
        const svg = e.target;
        const w = Math.round(svg.getBoundingClientRect().width);
        if (!svg.__chartArgs || w === 0 || Math.abs(w - (svg.__chartW || 0)) < 2) continue;
        const [fn, history, total] = svg.__chartArgs;
        fn(svg, history, total);
      }
    });
    ro.observe($('#chart-metrics'));
    ro.observe($('#chart-cohort'));
  }

  // ---------------------------------------------------------------- health, clients, audit

  async function refreshSlow() {
    await Promise.allSettled([refreshHealth(), refreshClients(), refreshAudit()]);
  }

  async function refreshHealth() {
    const el = $('#health');
    try {
      const res = await fetch('/healthz', { cache: 'no-store', credentials: 'same-origin' });
      const body = await res.json();
      const ok = body && body.fl_server === 'ok' && body.database === 'ok';
      el.className = `health ${ok ? 'health-ok' : 'health-warn'}`;
      $('#health-text').textContent = body && body.fl_server === 'ok' ? 'FL server connected' : `FL server ${body && body.fl_server ? body.fl_server : 'unknown'}`;
      el.title = `gateway ${body && body.status ? body.status : '?'} · database ${body && body.database ? body.database : '?'} · FL server ${body && body.fl_server ? body.fl_server : '?'}`;
    } catch (_) {
      el.className = 'health health-bad';
      $('#health-text').textContent = 'gateway unreachable';
      el.title = '';
    }
    el.hidden = false;
  }

  function forbidSection(section, key) {
    state.forbidden[key] = true;
    sectionMsg(section, 'Your role may not see this.', 'info');
    $('.section-data', section).hidden = true;
    $(`#${key}-empty`).hidden = true;
    $(`#${key}-meta`).hidden = true;
  }

  async function refreshClients() {
    const section = $('#clients');
    if (state.forbidden.clients) return;
    let clients;
    try {
      clients = await api('/v1/clients');
    } catch (e) {
      if (e instanceof StaleError) throw e;
      if (e instanceof HttpError && e.status === 403) forbidSection(section, 'clients');
      else sectionMsg(section, `Could not refresh the clients: ${errorText(e)}. Retrying…`);
      return;
    }
    sectionMsg(section, null);
    $('.section-data', section).hidden = false;
    clients = Array.isArray(clients) ? clients : [];
    const sig = JSON.stringify(clients);
    if (sig === state.clientsSig) return;
    state.clientsSig = sig;
    const active = clients.filter((c) => !c.revoked_at).length;
    $('#clients-meta').hidden = false;
    $('#clients-meta').textContent = `${active} active · ${clients.length - active} revoked`;
    $('#clients-body').replaceChildren(...clients.map((c) => h('tr', { dataset: { clientId: String(c.client_id) } },
      h('td', { class: 'mono' }, String(c.client_id)),
      h('td', null, String(c.name ?? '')),
      timeCell(c.created_at),
      h('td', { title: c.revoked_at ? `revoked ${fmtTime(c.revoked_at)}` : null },
        c.revoked_at ? plainBadge('revoked', 'failed') : plainBadge('active', 'completed')),
      h('td', null, c.has_certificate ? h('span', { class: 'yes' }, 'yes') : h('span', { class: 'no' }, 'no')))));
    $('#clients-empty').hidden = clients.length > 0;
  }

  async function refreshAudit() {
    const section = $('#audit');
    if (state.forbidden.audit) return;
    try {
      // First call: the newest 50 (?tail=true). Later calls follow the log with ?after=<highest seq seen>, page by
      // page, so the view holds the newest 50 entries whatever window `limit` alone returns.
      for (let page = 0; page < AUDIT_MAX_PAGES_PER_TICK; page++) {
        const q = state.auditMaxSeq === null ? `tail=true&limit=${AUDIT_KEEP}` : `after=${encodeURIComponent(state.auditMaxSeq)}&limit=${AUDIT_KEEP}`;
        const entries = await api(`/v1/audit?${q}`);
        const list = Array.isArray(entries) ? entries : [];
        let grew = false;
        for (const e of list) {
          if (!e || !isNum(e.seq)) continue;
          if (!state.audit.has(e.seq)) grew = true;
          state.audit.set(e.seq, e);
          if (state.auditMaxSeq === null || e.seq > state.auditMaxSeq) state.auditMaxSeq = e.seq;
        }
        if (list.length < AUDIT_KEEP || !grew) break;
      }
    } catch (e) {
      if (e instanceof StaleError) throw e;
      if (e instanceof HttpError && e.status === 403) forbidSection(section, 'audit');
      else sectionMsg(section, `Could not refresh the audit log: ${errorText(e)}. Retrying…`);
      return;
    }
    sectionMsg(section, null);
    $('.section-data', section).hidden = false;
    $('#audit-meta').hidden = false;
    // Keep only the newest AUDIT_KEEP in memory and display them newest first.
    const seqs = [...state.audit.keys()].sort((a, b) => b - a);
    for (const old of seqs.slice(AUDIT_KEEP)) state.audit.delete(old);
    const shown = seqs.slice(0, AUDIT_KEEP).map((k) => state.audit.get(k));
    const sig = shown.map((e) => e.seq).join(',');
    if (sig === state.auditSig) return;
    state.auditSig = sig;
    $('#audit-body').replaceChildren(...shown.map((e) => {
      const detail = e.detail === null || e.detail === undefined || e.detail === '' ? null
        : typeof e.detail === 'string' ? e.detail : JSON.stringify(e.detail);
      return h('tr', { dataset: { seq: String(e.seq) }, title: detail },
        h('td', { class: 'num muted' }, String(e.seq)),
        timeCell(e.time),
        h('td', null, String(e.actor ?? '')),
        h('td', null, h('span', { class: 'action' }, String(e.action ?? ''))),
        h('td', { class: 'mono target' }, String(e.target ?? '')),
        h('td', null, plainBadge(String(e.outcome ?? ''), outcomeTone(e.outcome))));
    }));
    $('#audit-empty').hidden = shown.length > 0;
  }

  // ---------------------------------------------------------------- boot

  function boot() {
    $('#signin-form').addEventListener('submit', (ev) => {
      ev.preventDefault();
      const token = $('#token-input').value.trim();
      if (!token) return;
      $('#token-input').value = '';
      startSession(token);
    });
    $('#signout').addEventListener('click', (ev) => { ev.preventDefault(); signOut(); });
    $('#jobs-body').addEventListener('click', onJobsClick);
    $('#jobs-body').addEventListener('keydown', onJobsKey);
    $('#btn-cancel').addEventListener('click', onCancel);
    $('#btn-download').addEventListener('click', onDownload);
    watchChartSizes();
    window.addEventListener('hashchange', () => {
      const t = readHashToken();
      if (t) startSession(t);
    });
    document.addEventListener('visibilitychange', () => {
      if (!document.hidden && state.token) { fast.tick(); slow.tick(); }
    });

    const fromHash = readHashToken();
    const token = fromHash || sessionStorage.getItem(TOKEN_KEY);
    if (token) startSession(token);
    else { showSignIn(false); markLoaded(); }
  }

  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', boot);
  else boot();
})();
