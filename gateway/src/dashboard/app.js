// The wasmgate dashboard. It reads the management API the CLI uses and
// draws it; it keeps nothing but the last few minutes of samples, in this
// tab. No framework and no build step: what is here is what runs. uPlot
// (vendored, MIT) draws the charts.
//
// Every text from the gateway (names, topics, log lines: a device or a
// function wrote them) goes into the page as text, never as markup.
'use strict';

(function () {
  const STATS_EVERY_MS = 1000;
  const SLOW_EVERY_MS = 5000;
  /** The cost report adds up hours of usage: every 30 s is plenty. */
  const COST_EVERY_MS = 30000;
  const TIMEOUT_MS = 4000;
  // Samples per chart: five minutes at one a second.
  const KEEP = 300;
  const LOG_LINES = 200;
  const DEAD_LETTERS = 20;
  const TOKEN_KEY = 'wasmgate-token';

  const $ = (id) => document.getElementById(id);

  // ---- the token: given once in the URL's fragment (which the browser
  // never sends), then kept in this tab's sessionStorage and taken out of
  // the address bar, so that it is neither in the history nor in a
  // screenshot.

  let tokenInMemory = null;

  function storage() {
    try {
      return window.sessionStorage;
    } catch (e) {
      return null;
    }
  }

  function takeTokenFromFragment() {
    const params = new URLSearchParams(location.hash.slice(1));
    const given = params.get('token');
    if (given === null) return;
    tokenInMemory = given;
    try {
      const s = storage();
      if (s) s.setItem(TOKEN_KEY, given);
    } catch (e) {
      // Storage full or refused: the token lasts as long as the page.
    }
    params.delete('token');
    const rest = params.toString();
    history.replaceState(null, '', location.pathname + location.search + (rest ? '#' + rest : ''));
  }

  function token() {
    if (tokenInMemory) return tokenInMemory;
    try {
      const s = storage();
      return s ? s.getItem(TOKEN_KEY) : null;
    } catch (e) {
      return null;
    }
  }

  // ---- requests

  class HttpError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  // One GET of the API, relative to the page (so a proxy's prefix stays),
  // given up after TIMEOUT_MS: a gateway that hangs is as down as one that
  // refuses.
  async function api(path) {
    const headers = {};
    const t = token();
    if (t) headers.Authorization = 'Bearer ' + t;
    const abort = new AbortController();
    const timer = setTimeout(() => abort.abort(), TIMEOUT_MS);
    try {
      let response;
      try {
        response = await fetch(path, { headers, cache: 'no-store', signal: abort.signal });
      } catch (e) {
        throw new Error(abort.signal.aborted ? 'no answer within ' + TIMEOUT_MS / 1000 + ' s' : 'no connection');
      }
      let body = null;
      try {
        body = await response.json();
      } catch (e) {
        body = null;
      }
      if (!response.ok) {
        throw new HttpError(response.status, (body && body.error) || response.status + ' ' + response.statusText);
      }
      if (body === null) throw new Error('an answer that is not JSON');
      return body;
    } finally {
      clearTimeout(timer);
    }
  }

  // ---- small helpers

  // An element with attributes and children (strings become text nodes).
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === 'class') node.className = v;
      else if (k === 'text') node.textContent = v;
      else node.setAttribute(k, v === true ? '' : String(v));
    }
    for (const c of children) {
      if (c === null || c === undefined) continue;
      node.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return node;
  }

  function fillBody(table, rows, empty, columns) {
    const body = table.tBodies[0];
    body.replaceChildren();
    if (rows.length === 0) {
      body.append(el('tr', {}, el('td', { class: 'empty', colspan: columns, text: empty })));
    } else {
      body.append(...rows);
    }
  }

  const integer = new Intl.NumberFormat('en-US', { maximumFractionDigits: 0 });

  function count(n) {
    return n === null || n === undefined ? '–' : integer.format(n);
  }

  function rate(n) {
    if (n === null || n === undefined) return '–';
    return n < 10 ? n.toFixed(1) : integer.format(n);
  }

  function ms(n) {
    if (n === null || n === undefined) return '–';
    if (n < 1) return n.toFixed(2) + ' ms';
    if (n < 10) return n.toFixed(1) + ' ms';
    return integer.format(n) + ' ms';
  }

  function bytes(n) {
    if (n === null || n === undefined) return '–';
    const units = ['B', 'KiB', 'MiB', 'GiB'];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) {
      n /= 1024;
      i += 1;
    }
    return (i === 0 ? integer.format(n) : n.toFixed(1)) + ' ' + units[i];
  }

  function pad(n) {
    return String(n).padStart(2, '0');
  }

  function clock(msSinceEpoch) {
    const d = new Date(msSinceEpoch);
    return pad(d.getHours()) + ':' + pad(d.getMinutes()) + ':' + pad(d.getSeconds());
  }

  // HH:MM:SS today, the date too otherwise.
  function when(msSinceEpoch) {
    if (typeof msSinceEpoch !== 'number') return '–';
    const d = new Date(msSinceEpoch);
    const time = clock(msSinceEpoch);
    const today = new Date();
    if (d.toDateString() === today.toDateString()) return time;
    return d.getFullYear() + '-' + pad(d.getMonth() + 1) + '-' + pad(d.getDate()) + ' ' + time;
  }

  function short(version) {
    return typeof version === 'string' ? version.slice(0, 12) : '–';
  }

  // ---- the request filter: `#request=42`, set by a click on any request id.

  function filterRequest() {
    const r = new URLSearchParams(location.hash.slice(1)).get('request');
    return r && /^[0-9]+$/.test(r) ? r : null;
  }

  function requestLink(id) {
    if (id === null || id === undefined) return '–';
    return el('a', { class: 'request', href: '#request=' + id, title: 'only this request', text: String(id) });
  }

  function showFilter() {
    const r = filterRequest();
    $('filter').hidden = r === null;
    if (r !== null) {
      $('filter-request').textContent = r;
      $('filter-request').setAttribute('href', '#request=' + r);
    }
  }

  // ---- the status banner

  let lastGood = null;

  function setStatus(state, text) {
    const status = $('status');
    status.className = state;
    status.textContent = text;
    document.body.dataset.state = state;
  }

  function statsFailed(error) {
    if (error instanceof HttpError && error.status === 401) {
      setStatus('error', 'The gateway refused the token (401): open /dashboard#token=<the token in api.token_file>.');
      return;
    }
    const since = lastGood === null ? '' : ' The figures below are from ' + when(lastGood) + '.';
    const why = error instanceof HttpError ? 'it answered ' + error.status + ' (' + error.message + ')' : error.message;
    setStatus('error', 'Gateway unreachable: ' + why + '. Retrying every second.' + since);
  }

  // ---- charts

  function axisValues(format) {
    return (u, splits) => splits.map((v) => (v === null ? '' : v === 0 ? '0' : format(v)));
  }

  // Time ticks a second apart at least, as HH:MM:SS (uPlot's own would
  // show milliseconds while a chart holds only a few seconds).
  const timeAxis = {
    size: 30,
    space: 80,
    incrs: [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600],
    values: (u, splits) => splits.map((v) => clock(v * 1000)),
  };

  // `top`: the least the y axis goes to, when every value is 0.
  function makeChart(container, title, series, format, top) {
    const opts = {
      title,
      width: Math.max(container.clientWidth, 200),
      height: 150,
      scales: {
        x: { time: true },
        y: { range: (u, min, max) => [0, max > 0 ? max * 1.15 : top] },
      },
      series: [
        { value: (u, v) => (v === null ? '–' : when(v * 1000)) },
        ...series.map((s) => ({
          label: s.label,
          stroke: s.color,
          width: 1.5,
          points: { show: false },
          value: (u, v) => (v === null ? '–' : format(v)),
        })),
      ],
      axes: [timeAxis, { size: 64, values: axisValues(format) }],
      cursor: { drag: { x: false, y: false } },
      legend: { live: true },
    };
    const data = [[], ...series.map(() => [])];
    const chart = new uPlot(opts, data, container);
    return {
      push(t, values) {
        data[0].push(t);
        values.forEach((v, i) => data[i + 1].push(v));
        if (data[0].length > KEEP) data.forEach((column) => column.shift());
        chart.setData(data);
        container.dataset.points = String(data[0].length);
      },
      resize() {
        chart.setSize({ width: Math.max(container.clientWidth, 200), height: 150 });
      },
      destroy() {
        chart.destroy();
      },
    };
  }

  // ---- functions

  // The median and 99th percentile of the durations between two polls,
  // from the difference of the histogram's buckets (bucket i holds
  // [2^i, 2^(i+1)) µs; as /v1/stats does, a percentile is its bucket's
  // upper bound). Null when nothing ran in between.
  function windowQuantiles(now, before) {
    const delta = now.map((n, i) => Math.max(0, n - ((before && before[i]) || 0)));
    const total = delta.reduce((a, b) => a + b, 0);
    const at = (q) => {
      if (total === 0) return null;
      const rank = Math.max(1, Math.ceil(q * total));
      let seen = 0;
      for (let i = 0; i < delta.length; i++) {
        seen += delta[i];
        if (seen >= rank) return Math.pow(2, i + 1) / 1000;
      }
      return null;
    };
    return [at(0.5), at(0.99)];
  }

  function figure(key, label, title) {
    const dd = el('dd', { text: '–' });
    return { node: el('div', { title, 'data-figure': key }, el('dt', { text: label }), dd), dd };
  }

  class Card {
    constructor(name) {
      this.figures = {
        rate: figure('rate', 'events/s', 'events taken per second, over the last poll'),
        p50: figure('p50', 'p50', 'median duration over the last poll (the upper bound of its histogram bucket)'),
        p99: figure('p99', 'p99', '99th percentile duration over the last poll'),
        inFlight: figure('inFlight', 'in flight', 'events taken and not yet settled: queued or running'),
        events: figure('events', 'events', 'events taken since the gateway started'),
        ok: figure('ok', 'ok', 'invocations that succeeded'),
        failed: figure('failed', 'errors', 'failed invocations, every attempt counted'),
        retries: figure('retries', 'retries', 'attempts run again after a retryable failure'),
        deadLetters: figure('deadLetters', 'dead letters', 'events that failed every attempt'),
        throttles: figure('throttles', 'throttles', 'events that found its queue full and waited'),
        cold: figure('cold', 'cold starts', 'invocations that had to instantiate the module first'),
        warm: figure('warm', 'warm starts', 'invocations that took a ready instance'),
      };
      this.version = el('span', { class: 'version mono' });
      this.kinds = el('div', { class: 'kinds' });
      const throughput = el('div', { class: 'chart', 'data-chart': 'throughput', 'data-points': '0' });
      const duration = el('div', { class: 'chart', 'data-chart': 'duration', 'data-points': '0' });
      this.root = el(
        'article',
        { class: 'card', 'data-function': name },
        el('header', {}, el('h3', { text: name }), this.version),
        el('dl', { class: 'figures' }, ...Object.values(this.figures).map((f) => f.node)),
        this.kinds,
        throughput,
        duration,
      );
      $('functions').append(this.root);
      this.throughput = makeChart(throughput, 'Throughput (per second)', [
        { label: 'events', color: '#2457c5' },
        { label: 'errors', color: '#c0392b' },
      ], rate, 1);
      this.duration = makeChart(duration, 'Duration', [
        { label: 'p50', color: '#1a7f45' },
        { label: 'p99', color: '#d9822b' },
      ], ms, 1);
    }

    // `f` and `was` are this function in two successive polls, `seconds`
    // apart on the gateway's clock.
    update(f, was, seconds, nowMs) {
      const starts = (key) => (f.versions || []).reduce((sum, v) => sum + (v[key] || 0), 0);
      const live = (f.versions || []).map((v) =>
        v.live_share < 1 ? short(v.version) + ' ' + Math.round(v.live_share * 100) + '%' : short(v.version));
      this.version.textContent = live.length ? 'live ' + live.join(' · ') : '';
      const set = (name, text, bad) => {
        this.figures[name].dd.textContent = text;
        this.figures[name].dd.classList.toggle('bad', Boolean(bad));
      };
      set('inFlight', count(f.in_flight));
      set('events', count(f.events));
      set('ok', count(f.ok));
      set('failed', count(f.failed), f.failed > 0);
      set('retries', count(f.retries));
      set('deadLetters', count(f.dead_letters), f.dead_letters > 0);
      set('throttles', count(f.throttles));
      set('cold', count(starts('cold_starts')));
      set('warm', count(starts('warm_starts')));
      const kinds = Object.entries(f.failed_by_kind || {}).filter(([, n]) => n > 0);
      this.kinds.textContent = kinds.map(([k, n]) => k + ' ' + count(n)).join(' · ');

      if (!was || !(seconds > 0)) return;
      const t = nowMs / 1000;
      // Counters that went back: the gateway restarted in between.
      if (f.events < was.events || f.failed < was.failed) {
        this.throughput.push(t, [null, null]);
        this.duration.push(t, [null, null]);
        return;
      }
      const events = (f.events - was.events) / seconds;
      const errors = (f.failed - was.failed) / seconds;
      const [p50, p99] = windowQuantiles(f.duration.buckets, was.duration.buckets);
      set('rate', rate(events));
      set('p50', ms(p50));
      set('p99', ms(p99));
      this.throughput.push(t, [events, errors]);
      this.duration.push(t, [p50, p99]);
    }

    remove() {
      this.throughput.destroy();
      this.duration.destroy();
      this.root.remove();
    }
  }

  // ---- the gateway: outbox, upstream, store

  let outboxChart = null;

  function renderGateway(stats, before, seconds) {
    const up = stats.upstream || {};
    const state = $('upstream-state');
    if (up.connected === true) {
      state.textContent = 'connected';
      state.className = 'value up';
    } else if (up.connected === false) {
      state.textContent = 'down';
      state.className = 'value down';
    } else {
      state.textContent = 'no upstream drain';
      state.className = 'value unknown';
    }
    $('upstream-reconnects').textContent =
      typeof up.reconnects === 'number' ? count(up.reconnects) + ' reconnects' : 'reconnects: -';

    const outbox = stats.outbox;
    $('outbox-bytes').textContent = bytes(outbox.bytes);
    $('outbox-rows').textContent = count(outbox.written) + ' written · ' + count(outbox.deleted) +
      ' delivered and deleted · ' + count(outbox.dropped) + ' dropped';
    $('store-commits').textContent = count(stats.store.commits);
    $('store-transactions').textContent = count(stats.store.transactions) + ' transactions (group commits)';
    $('store-failures').textContent = count(stats.store.failures);
    $('store-failures').className = 'value' + (stats.store.failures > 0 ? ' down' : '');

    const previous = (d) => before && before.outbox.destinations.find((p) => p.destination === d.destination);
    const rows = outbox.destinations.map((d) => {
      const was = previous(d);
      const perSecond = was && seconds > 0 && d.delivered >= was.delivered ? (d.delivered - was.delivered) / seconds : null;
      return el('tr', { 'data-destination': d.destination },
        el('td', { text: d.destination }),
        el('td', { class: 'num', text: bytes(d.bytes) }),
        el('td', { class: 'num', text: count(d.delivered) }),
        el('td', { class: 'num', text: rate(perSecond) }),
        el('td', { class: 'num', text: count(d.refused) }),
        el('td', { class: 'num', text: count(d.undeliverable) }));
    });
    fillBody($('destinations'), rows, 'no outbox drains', 6);

    if (outboxChart === null || outboxChart.destinations !== outbox.destinations.map((d) => d.destination).join()) {
      if (outboxChart !== null) outboxChart.chart.destroy();
      const colors = ['#2457c5', '#8e44ad', '#16a085'];
      outboxChart = {
        destinations: outbox.destinations.map((d) => d.destination).join(),
        chart: makeChart($('outbox-chart'), 'Outbox backlog by destination',
          outbox.destinations.map((d, i) => ({ label: d.destination, color: colors[i % colors.length] })), bytes,
          1024),
      };
    }
    outboxChart.chart.push(stats.now_ms / 1000, outbox.destinations.map((d) => d.bytes));
  }

  // ---- /v1/stats, every second

  const cards = new Map();
  let previousStats = null;

  function restarted(stats, before) {
    if (!before) return false;
    return stats.store.transactions < before.store.transactions;
  }

  function onStats(stats) {
    const before = previousStats;
    previousStats = stats;
    if (restarted(stats, before)) resetLogs();
    const seconds = before ? (stats.now_ms - before.now_ms) / 1000 : 0;
    $('gateway-version').textContent = 'v' + stats.gateway_version;
    renderGateway(stats, before, seconds);
    const seen = new Set();
    for (const f of stats.functions) {
      seen.add(f.name);
      let card = cards.get(f.name);
      if (!card) {
        card = new Card(f.name);
        cards.set(f.name, card);
      }
      const was = before && before.functions.find((p) => p.name === f.name);
      card.update(f, was, seconds, stats.now_ms);
      versionStarts.set(f.name, f.versions || []);
    }
    for (const [name, card] of cards) {
      if (!seen.has(name)) {
        card.remove();
        cards.delete(name);
      }
    }
    $('functions-empty').hidden = stats.functions.length > 0;
    renderVersions();
    lastGood = stats.now_ms;
    setStatus('ok', 'live · ' + when(stats.now_ms));
  }

  async function pollStats() {
    try {
      onStats(await api('v1/stats'));
    } catch (e) {
      statsFailed(e);
    }
    setTimeout(pollStats, STATS_EVERY_MS);
  }

  // ---- versions and aliases (/v1/functions, what `wasmgate functions --json` prints)

  // Per function, the versions the live alias routes to, from /v1/stats:
  // their starts and shares.
  const versionStarts = new Map();

  function sectionNote(id, text) {
    $(id).hidden = !text;
    $(id).textContent = text || '';
  }

  function failedNote(what, error) {
    return 'Could not read ' + what + ': ' + (error instanceof HttpError ? error.status + ' ' : '') + error.message + '.';
  }

  // The last answer of /v1/functions; the table is drawn again with each
  // /v1/stats, so that its starts keep up with the cards'.
  let deployed = null;

  async function loadVersions() {
    try {
      const functions = await api('v1/functions');
      deployed = Array.isArray(functions) ? functions : [];
    } catch (e) {
      sectionNote('versions-note', failedNote('the functions', e));
      return;
    }
    sectionNote('versions-note', null);
    renderVersions();
  }

  function renderVersions() {
    if (deployed === null) return;
    const rows = [];
    for (const f of deployed) {
      const alias = f.alias;
      const routed = versionStarts.get(f.name) || [];
      const versions = (f.versions || []).slice().sort((a, b) => b.published_ms - a.published_ms);
      versions.forEach((v, i) => {
        const stats = routed.find((r) => r.version === v.version);
        const roles = [];
        if (v.version === f.live) roles.push('live');
        if (alias && alias.other === v.version) roles.push('canary ' + Math.round((alias.weight || 0) * 100) + '%');
        if (alias && alias.previous === v.version) roles.push('rollback target');
        rows.push(el('tr', { class: stats ? 'live' : null, 'data-function': f.name, 'data-version': v.version },
          el('td', { text: i === 0 ? f.name : '' }),
          el('td', { class: 'hash', title: v.version, text: short(v.version) }),
          el('td', { text: roles.join(', ') }),
          el('td', { class: 'num', text: stats ? Math.round(stats.live_share * 100) + '%' : '' }),
          el('td', { class: 'num', text: stats ? count(stats.cold_starts) : '' }),
          el('td', { class: 'num', text: stats ? count(stats.warm_starts) : '' }),
          el('td', { title: v.source, text: when(v.published_ms) }),
          el('td', { text: v.published_by || '' }),
          el('td', { class: 'num', text: bytes(v.size) })));
      });
    }
    fillBody($('versions'), rows, 'no versions', 9);
  }

  // ---- dead letters (/v1/dead-letters), the newest first

  async function loadDeadLetters() {
    const r = filterRequest();
    let answer;
    try {
      answer = await api('v1/dead-letters?order=newest&limit=' + DEAD_LETTERS + (r ? '&request=' + r : ''));
    } catch (e) {
      sectionNote('dead-letters-note', failedNote('the dead letters', e));
      return;
    }
    sectionNote('dead-letters-note', null);
    $('dead-letters-total').textContent = typeof answer.total === 'number' ? '(' + count(answer.total) + ' in the queue)' : '';
    const rows = (answer.letters || []).map((l) => {
      const last = (l.attempts || [])[l.attempts.length - 1] || {};
      const error = last.kind ? last.kind + ': ' + (last.error || '') : last.error || '';
      return el('tr', { 'data-request': l.request_id },
        el('td', { class: 'mono', text: String(l.id) }),
        el('td', { text: when(l.failed_ms) }),
        el('td', { text: l.function }),
        el('td', { class: 'hash', title: l.version, text: short(l.version) }),
        el('td', {}, requestLink(l.request_id)),
        el('td', { class: 'mono', text: l.topic }),
        el('td', { class: 'num', text: count((l.attempts || []).length) }),
        el('td', { class: 'error', title: error, text: error }));
    });
    fillBody($('dead-letters'), rows, r ? 'no dead letter of request ' + r : 'no dead letters', 8);
  }

  // ---- logs (/v1/logs), fetched after the last line seen

  let logs = [];
  let lastLogId = null;

  function resetLogs() {
    logs = [];
    lastLogId = null;
  }

  async function loadLogs() {
    const r = filterRequest();
    const query = ['limit=' + LOG_LINES];
    if (lastLogId !== null) query.push('after=' + lastLogId);
    if (r) query.push('request=' + r);
    let answer;
    try {
      answer = await api('v1/logs?' + query.join('&'));
    } catch (e) {
      if (e instanceof HttpError && e.status === 404) {
        sectionNote('logs-note', 'This gateway keeps no function logs to show (it has no /v1/logs).');
        fillBody($('logs'), [], 'no logs', 7);
      } else {
        sectionNote('logs-note', failedNote('the logs', e));
      }
      return;
    }
    sectionNote('logs-note', null);
    const lines = Array.isArray(answer.lines) ? answer.lines : [];
    for (const line of lines) {
      if (typeof line.id === 'number' && (lastLogId === null || line.id > lastLogId)) lastLogId = line.id;
    }
    logs = logs.concat(lines).slice(-LOG_LINES);
    const rows = logs.slice().reverse().map((l) =>
      el('tr', { 'data-request': l.request_id },
        el('td', { text: when(l.at_ms) }),
        el('td', { class: 'level-' + String(l.level || '').toLowerCase(), text: l.level || '' }),
        el('td', { text: l.function || '' }),
        el('td', { class: 'hash', title: l.version, text: short(l.version) }),
        el('td', {}, requestLink(l.request_id)),
        el('td', { text: l.trigger || '' }),
        el('td', { class: 'message', title: l.message, text: l.message || '' })));
    fillBody($('logs'), rows, r ? 'no log lines of request ' + r : 'no log lines yet', 7);
  }

  // ---- cost (/v1/cost, what `wasmgate cost` prints), every 30 s

  function dollars(usd) {
    if (typeof usd !== 'number') return '';
    return '$' + (usd >= 0.01 || usd === 0 ? usd.toFixed(2) : usd.toFixed(5));
  }

  let costLoaded = 0;

  async function loadCost() {
    if (Date.now() - costLoaded < COST_EVERY_MS) return;
    costLoaded = Date.now();
    let report;
    try {
      report = await api('v1/cost?since_ms=' + (Date.now() - 86400000));
    } catch (e) {
      sectionNote('cost-note', failedNote('the cost report', e));
      return;
    }
    sectionNote('cost-note', null);
    $('cost-total').textContent = typeof report.aws_month_usd === 'number'
      ? '(the same on AWS Lambda and IoT Core: ' + dollars(report.aws_month_usd) + ' a month)' : '';
    $('cost').title = report.prices_source || '';
    const rows = (report.versions || []).map((v) =>
      el('tr', { 'data-function': v.function, 'data-version': v.version },
        el('td', { text: v.function }),
        el('td', { class: 'hash', title: v.version, text: short(v.version) }),
        el('td', { class: 'num', text: count(v.invocations) }),
        el('td', { class: 'num', text: (v.total_duration_ms || 0).toFixed(1) }),
        el('td', { class: 'num', text: typeof v.p99_duration_ms === 'number' ? v.p99_duration_ms.toFixed(3) : '' }),
        el('td', { class: 'num', text: (v.gb_seconds || 0).toPrecision(3) }),
        el('td', { class: 'num', text: bytes(v.peak_memory_bytes) }),
        el('td', { class: 'num', text: dollars(v.aws_month_usd) }),
        el('td', { class: 'message', title: (v.advice || []).join('\n'), text: (v.advice || []).join('; ') || 'well sized' })));
    fillBody($('cost'), rows, 'no invocations in the last 24 hours', 9);
  }

  // ---- every few seconds

  async function pollSlow() {
    await Promise.all([loadVersions(), loadDeadLetters(), loadLogs(), loadCost()]);
    setTimeout(pollSlow, SLOW_EVERY_MS);
  }

  function start() {
    takeTokenFromFragment();
    showFilter();
    window.addEventListener('hashchange', () => {
      takeTokenFromFragment();
      showFilter();
      resetLogs();
      loadDeadLetters();
      loadLogs();
    });
    $('filter-clear').addEventListener('click', (event) => {
      event.preventDefault();
      history.pushState(null, '', location.pathname + location.search);
      window.dispatchEvent(new HashChangeEvent('hashchange'));
    });
    let resizing = null;
    window.addEventListener('resize', () => {
      clearTimeout(resizing);
      resizing = setTimeout(() => {
        for (const card of cards.values()) {
          card.throughput.resize();
          card.duration.resize();
        }
        if (outboxChart) outboxChart.chart.resize();
      }, 100);
    });
    if (typeof uPlot !== 'function') {
      setStatus('error', 'The chart library did not load (dashboard/uplot.min.js).');
      return;
    }
    pollStats();
    // The first stats first: versions show their starts from them.
    setTimeout(pollSlow, 300);
  }

  start();
})();
