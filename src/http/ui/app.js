// The dashboard: aliases, chains, models and events of one aliasd, live;
// in a fleet, also the nodes and each alias's state on each node.
//
// Data flow: the page reads /api/aliases and /api/models, then follows
// /api/events from the journal's seq at load time. Each event goes into the
// feed at once and schedules one re-read of both lists (events that arrive
// together share it), because one change can move other rows too (the
// aliases that point at a re-pointed alias). Rows are then updated in place
// and the changed ones highlighted. The actor of a row is the actor of the
// event with the row's seq: the last 500 events are read at load time and
// every live event is kept, so rows changed before that show none (their
// History button finds it).
//
// Everything from the API is put into the page with textContent or
// setAttribute, never parsed as HTML.

import { api, aliasPath, ApiError, follow, onTokenNeeded, setToken, token } from './api.js';
import { drawGraph, MAX_NODES } from './graph.js';

/** How many past events are read at load time for the actors and the feed. */
const RECENT_EVENTS = 500;
/** Events kept in the live feed. */
const FEED_SIZE = 100;
/** Page size of a history search. */
const HISTORY_PAGE = 50;

const $ = (id) => document.getElementById(id);

const state = {
  aliases: [],
  models: [],
  /** The fleet's nodes (GET /api/nodes), or null on a single host. */
  nodes: null,
  /** This node's name in a fleet (from /healthz), or null on a single host. */
  node: null,
  /** Events by seq, for the actor of each row. */
  bySeq: new Map(),
  sort: { key: 'alias', dir: 1 },
  filter: '',
  /** Table rows by lowercased alias name, kept across refreshes. */
  rows: new Map(),
  /** Aliases named by events since the last refresh: highlighted. */
  touched: new Set(),
  lastSeq: 0,
  loaded: false,
  historyParams: null,
  historyNext: null,
};

// ---------------------------------------------------------------------------
// Small helpers.

function text(tag, content, className) {
  const node = document.createElement(tag);
  if (content !== undefined && content !== null) {
    node.textContent = String(content);
  }
  if (className) {
    node.className = className;
  }
  return node;
}

function shortDigest(digest) {
  if (!digest) {
    return '';
  }
  const hex = digest.startsWith('sha256:') ? digest.slice(7) : digest;
  return hex.slice(0, 12);
}

function ago(iso) {
  const time = Date.parse(iso);
  if (Number.isNaN(time)) {
    return iso || '';
  }
  const seconds = Math.round((Date.now() - time) / 1000);
  if (seconds < 5) {
    return 'just now';
  }
  if (seconds < 60) {
    return `${seconds} s ago`;
  }
  if (seconds < 3600) {
    return `${Math.floor(seconds / 60)} min ago`;
  }
  if (seconds < 86400) {
    return `${Math.floor(seconds / 3600)} h ago`;
  }
  return new Date(time).toLocaleDateString();
}

function timeElement(iso) {
  const node = text('time', ago(iso));
  if (iso) {
    node.setAttribute('datetime', iso);
    node.title = new Date(Date.parse(iso)).toLocaleString();
  }
  return node;
}

function humanSize(bytes) {
  const units = ['B', 'KB', 'MB', 'GB', 'TB'];
  let value = Number(bytes) || 0;
  let unit = 0;
  while (value >= 1000 && unit < units.length - 1) {
    value /= 1000;
    unit += 1;
  }
  return unit === 0 ? `${value} B` : `${value.toFixed(value < 10 ? 1 : 0)} ${units[unit]}`;
}

/** A CSS class suffix made only of letters and dashes. */
function classSafe(value) {
  return String(value).toLowerCase().replace(/[^a-z]+/g, '-');
}

function badge(value, family) {
  return text('span', value, `badge ${family}-${classSafe(value)}`);
}

function flash(node) {
  node.classList.remove('flash');
  // Reading the layout restarts the animation for a node flashed again.
  void node.offsetWidth;
  node.classList.add('flash');
  // Gone once played: a row moved by the sort or the filter would play it again.
  node.addEventListener('animationend', () => node.classList.remove('flash'), { once: true });
}

function showMessage(node, kind, message) {
  node.className = 'msg' + (kind ? ' msg-' + kind : '');
  node.setAttribute('role', kind === 'err' ? 'alert' : 'status');
  node.textContent = message;
}

function errorText(error) {
  if (error instanceof ApiError) {
    return `${error.message} (${error.status})`;
  }
  return `cannot reach aliasd: ${error && error.message ? error.message : error}; is it running?`;
}

/** `name@address` in a span, with a line-break opportunity after the `@`. */
function breakable(actor) {
  const span = document.createElement('span');
  const at = actor.indexOf('@');
  if (at < 0) {
    span.textContent = actor;
  } else {
    span.append(actor.slice(0, at + 1), document.createElement('wbr'), actor.slice(at + 1));
  }
  return span;
}

function actorOf(alias) {
  const event = state.bySeq.get(alias.seq);
  return event ? event.actor : '';
}

// ---------------------------------------------------------------------------
// Aliases table.

const COLUMNS = ['alias', 'target', 'resolved', 'state', 'digest', 'updated', 'actor', 'actions'];
const LABELS = {
  alias: 'Alias',
  target: 'Target',
  resolved: 'Resolved',
  state: 'State',
  digest: 'Digest',
  updated: 'Updated',
  actor: 'Actor',
  actions: 'Actions',
};

function createRow() {
  const row = document.createElement('tr');
  for (const column of COLUMNS) {
    const cell = document.createElement('td');
    cell.dataset.col = column;
    cell.dataset.label = LABELS[column];
    row.appendChild(cell);
  }
  const actions = row.lastChild;
  const repoint = text('button', 'Re-point', 'small');
  repoint.type = 'button';
  repoint.dataset.action = 'repoint';
  const history = text('button', 'History', 'small quiet');
  history.type = 'button';
  history.dataset.action = 'history';
  const remove = text('button', 'Delete', 'small danger');
  remove.type = 'button';
  remove.dataset.action = 'delete';
  actions.append(repoint, history, remove);
  return row;
}

/** What a row shows of an alias, but its actor: a change highlights the row. */
function signature(alias) {
  return JSON.stringify([
    alias.alias,
    alias.target,
    alias.resolved,
    alias.state,
    alias.digest,
    alias.prefix_matching,
    alias.updated_at,
    alias.seq,
  ]);
}

function fillRow(row, alias) {
  const cells = {};
  for (const cell of row.children) {
    cells[cell.dataset.col] = cell;
  }
  row.dataset.alias = alias.alias;
  row.dataset.state = alias.state;
  // One child per cell: on a phone each cell is a grid of label and value.
  const name = text('span');
  name.append(text('span', alias.alias, 'name'));
  if (alias.prefix_matching) {
    name.append(' ', text('span', 'prefix', 'badge kind-prefix'));
  }
  cells.alias.replaceChildren(name);
  cells.target.textContent = alias.target;
  cells.resolved.textContent = alias.resolved || '\u2014';
  cells.state.replaceChildren(badge(alias.state, 'state'));
  const digest = text('code', shortDigest(alias.digest));
  if (alias.digest) {
    digest.title = alias.digest;
  }
  cells.digest.replaceChildren(digest);
  cells.updated.replaceChildren(timeElement(alias.updated_at));
  for (const button of cells.actions.querySelectorAll('button')) {
    button.setAttribute('aria-label', `${button.textContent} ${alias.alias}`);
  }
}

function fillActor(row, alias) {
  const cell = row.querySelector('td[data-col="actor"]');
  const event = state.bySeq.get(alias.seq);
  const actor = event ? event.actor : '';
  if (cell.textContent !== (actor || '\u2014')) {
    cell.replaceChildren(breakable(actor || '\u2014'));
  }
  if (event && event.request_id) {
    cell.title = `request ${event.request_id}, seq ${alias.seq}`;
  } else if (!event) {
    cell.title = `seq ${alias.seq} is older than the events read at load time: see History`;
  } else {
    cell.title = `seq ${alias.seq}`;
  }
}

function sortValue(alias, key) {
  if (key === 'actor') {
    return actorOf(alias);
  }
  const value = alias[key];
  return value === null || value === undefined ? '' : String(value);
}

function visibleAliases() {
  const needle = state.filter.trim().toLowerCase();
  const shown = needle
    ? state.aliases.filter((alias) =>
        [alias.alias, alias.target, alias.resolved || '', alias.state, actorOf(alias)]
          .join('\n')
          .toLowerCase()
          .includes(needle),
      )
    : state.aliases.slice();
  const { key, dir } = state.sort;
  shown.sort((a, b) => {
    const order = sortValue(a, key).localeCompare(sortValue(b, key), undefined, { numeric: true });
    return order * dir || a.alias.toLowerCase().localeCompare(b.alias.toLowerCase());
  });
  return shown;
}

function renderAliases() {
  const touched = state.touched;
  state.touched = new Set();
  const present = new Set();
  for (const alias of state.aliases) {
    const key = alias.alias.toLowerCase();
    present.add(key);
    let row = state.rows.get(key);
    const sig = signature(alias);
    if (!row) {
      row = createRow();
      state.rows.set(key, row);
      if (state.loaded) {
        touched.add(key);
      }
    }
    if (row.sig !== sig) {
      fillRow(row, alias);
      if (row.sig !== undefined) {
        touched.add(key);
      }
      row.sig = sig;
    }
    row.aliasBody = alias;
    fillActor(row, alias);
  }
  for (const [key, row] of state.rows) {
    if (!present.has(key)) {
      row.remove();
      state.rows.delete(key);
    }
  }
  const shown = visibleAliases();
  const body = $('alias-rows');
  const wanted = shown.map((alias) => state.rows.get(alias.alias.toLowerCase()));
  wanted.forEach((row, idx) => {
    if (body.children[idx] !== row) {
      body.insertBefore(row, body.children[idx] || null);
    }
  });
  while (body.children.length > wanted.length) {
    body.lastChild.remove();
  }
  for (const key of touched) {
    const row = state.rows.get(key);
    if (row && row.isConnected) {
      flash(row);
    }
  }
  const total = state.aliases.length;
  $('alias-count').textContent = shown.length === total ? `${total}` : `${shown.length} of ${total}`;
  $('alias-empty').hidden = total !== 0;
  return shown;
}

// ---------------------------------------------------------------------------
// Models, the graph and the name lists.

function renderModels() {
  const rows = state.models.map((model) => {
    const row = document.createElement('tr');
    row.dataset.model = model.name;
    const cells = [
      ['model', text('span', model.name, 'name')],
      ['size', text('span', humanSize(model.size))],
      ['digest', text('code', shortDigest(model.digest))],
      ['aliases', text('span', model.aliases.length ? model.aliases.join(', ') : '\u2014')],
    ];
    for (const [column, content] of cells) {
      const cell = document.createElement('td');
      cell.dataset.col = column;
      cell.dataset.label = { model: 'Model', size: 'Size', digest: 'Digest', aliases: 'Aliases' }[column];
      cell.appendChild(content);
      row.appendChild(cell);
    }
    row.querySelector('td[data-col="size"]').title = `${model.size} bytes`;
    row.querySelector('td[data-col="digest"] code').title = model.digest;
    return row;
  });
  $('model-rows').replaceChildren(...rows);
  $('model-count').textContent = `${state.models.length}`;
  $('model-empty').hidden = state.models.length !== 0;
}

function renderGraph(shown) {
  const filtered = state.filter.trim() !== '';
  const leftOut = drawGraph($('graph-svg'), state.aliases, state.models, shown, !filtered);
  let summary = `${shown.length} alias${shown.length === 1 ? '' : 'es'} and their chains`;
  if (!filtered) {
    summary += `, ${state.models.length} model${state.models.length === 1 ? '' : 's'}`;
  }
  if (leftOut) {
    summary += `; ${leftOut} left out (over ${MAX_NODES} boxes): filter to see them`;
  }
  $('graph-summary').textContent = summary;
}

function renderNames() {
  const names = new Set();
  const options = [];
  const aliasOptions = [];
  for (const alias of state.aliases) {
    aliasOptions.push(new Option(alias.alias));
    names.add(alias.alias.toLowerCase());
    options.push(new Option(alias.alias));
  }
  for (const model of state.models) {
    if (!names.has(model.name.toLowerCase())) {
      options.push(new Option(model.name));
    }
  }
  $('names').replaceChildren(...options);
  $('alias-names').replaceChildren(...aliasOptions);
}

// ---------------------------------------------------------------------------
// Fleet mode: the nodes, and each alias's state on each node.

function renderNodes(shown) {
  const fleet = state.nodes !== null;
  $('nodes').hidden = !fleet;
  $('nodes-link').hidden = !fleet;
  if (!fleet) {
    return;
  }
  const labels = { node: 'Node', live: 'Live', applied: 'Applied seq', lag: 'Lag', models: 'Models', listen: 'Listen' };
  const rows = state.nodes.map((node) => {
    const row = document.createElement('tr');
    row.dataset.node = node.node;
    const cells = [
      ['node', text('span', node.node, 'name')],
      ['live', badge(node.live ? 'live' : 'expired', 'node')],
      ['applied', text('span', node.applied_seq)],
      ['lag', text('span', node.lag)],
      ['models', text('span', node.models.map((m) => m.name).join(', ') || '\u2014')],
      ['listen', text('code', node.listen)],
    ];
    for (const [column, content] of cells) {
      const cell = document.createElement('td');
      cell.dataset.col = column;
      cell.dataset.label = labels[column];
      cell.appendChild(content);
      row.appendChild(cell);
    }
    return row;
  });
  $('node-rows').replaceChildren(...rows);
  $('node-count').textContent = `${state.nodes.length}`;
  // Columns: every node named by a record or by an alias's map.
  const names = new Set(state.nodes.map((node) => node.node));
  for (const alias of shown) {
    for (const name of Object.keys(alias.nodes || {})) {
      names.add(name);
    }
  }
  const columns = [...names].sort();
  const head = [text('th', 'Alias')];
  for (const name of columns) {
    head.push(text('th', name));
  }
  head.forEach((cell) => cell.setAttribute('scope', 'col'));
  $('node-matrix-head').replaceChildren(...head);
  const matrix = shown
    .filter((alias) => alias.nodes)
    .map((alias) => {
      const row = document.createElement('tr');
      row.dataset.alias = alias.alias;
      const name = text('th', alias.alias, 'name');
      name.setAttribute('scope', 'row');
      row.appendChild(name);
      for (const node of columns) {
        const cell = document.createElement('td');
        cell.dataset.node = node;
        const on = alias.nodes[node];
        cell.appendChild(on ? badge(on.state, 'state') : text('span', '\u2014'));
        if (on && on.digest) {
          cell.title = on.digest;
        }
        row.appendChild(cell);
      }
      return row;
    });
  $('node-matrix-rows').replaceChildren(...matrix);
}

/** In a fleet (/healthz named this node), reads the fleet's nodes. */
async function loadNodes() {
  if (state.node !== null) {
    state.nodes = (await api('GET', '/api/nodes')).data.nodes;
  }
}

function render() {
  const shown = renderAliases();
  renderNodes(shown);
  renderModels();
  renderGraph(shown);
  renderNames();
}

// ---------------------------------------------------------------------------
// Loading and live updates.

let refreshTimer = null;
let refreshing = false;
let refreshAgain = false;

/** Re-reads the lists soon; events arriving meanwhile share the read. */
function scheduleRefresh(aliasKey) {
  if (aliasKey) {
    state.touched.add(aliasKey);
  }
  if (refreshTimer === null) {
    refreshTimer = setTimeout(runRefresh, 50);
  }
}

async function runRefresh() {
  refreshTimer = null;
  if (refreshing) {
    refreshAgain = true;
    return;
  }
  refreshing = true;
  try {
    await refresh();
  } finally {
    refreshing = false;
    if (refreshAgain) {
      refreshAgain = false;
      scheduleRefresh();
    }
  }
}

async function refresh() {
  try {
    const [aliases, models] = await Promise.all([
      api('GET', '/api/aliases'),
      api('GET', '/api/models'),
      loadNodes(),
    ]);
    state.aliases = aliases.data.aliases;
    state.models = models.data.models;
    render();
    state.loaded = true;
    $('load-error').hidden = true;
  } catch (error) {
    $('load-error').textContent = `cannot load the registry: ${errorText(error)}`;
    $('load-error').hidden = false;
  }
}

function setSeq(seq) {
  if (seq > state.lastSeq) {
    state.lastSeq = seq;
  }
  $('seq').textContent = `seq ${state.lastSeq}`;
}

function eventItem(event) {
  const item = document.createElement('li');
  item.dataset.seq = String(event.seq);
  item.dataset.type = event.type;
  item.dataset.alias = event.alias;
  const head = text('div', null, 'ev-head');
  head.append(text('span', `#${event.seq}`, 'ev-seq'), ' ', badge(event.type, 'type'), ' ', text('strong', event.alias, 'name'));
  const body = text('div', null, 'ev-body');
  if (event.previous_target && event.target) {
    body.append(text('span', `${event.previous_target} \u2192 ${event.target}`));
  } else if (event.target) {
    body.append(text('span', `\u2192 ${event.target}`));
  }
  const meta = text('div', null, 'ev-meta');
  const actor = text('span', event.actor, 'actor');
  if (event.request_id) {
    actor.title = `request ${event.request_id}`;
  }
  meta.append(actor, ' \u00b7 ', timeElement(event.time));
  item.append(head, body, meta);
  return item;
}

function addToFeed(event, live) {
  const feed = $('feed');
  const item = eventItem(event);
  feed.prepend(item);
  while (feed.children.length > FEED_SIZE) {
    feed.lastChild.remove();
  }
  $('feed-empty').hidden = true;
  if (live) {
    flash(item);
  }
}

function onEvent(event) {
  if (event.seq <= state.lastSeq && state.bySeq.has(event.seq)) {
    return;
  }
  state.bySeq.set(event.seq, event);
  setSeq(event.seq);
  addToFeed(event, true);
  scheduleRefresh(event.alias.toLowerCase());
  // Events are kept for the rows' actors; old ones no row shows go.
  if (state.bySeq.size > 2 * state.aliases.length + 2 * RECENT_EVENTS) {
    const wanted = new Set(state.aliases.map((alias) => alias.seq));
    for (const seq of state.bySeq.keys()) {
      if (!wanted.has(seq) && seq < state.lastSeq - RECENT_EVENTS) {
        state.bySeq.delete(seq);
      }
    }
  }
}

function setLive(status) {
  const node = $('live');
  const words = { live: 'live', reconnecting: 'reconnecting\u2026', token: 'token needed' };
  node.textContent = words[status] || status;
  node.className = `live live-${classSafe(status)}`;
}

async function loadRecent(seq) {
  if (seq === 0) {
    return;
  }
  const since = Math.max(0, seq - RECENT_EVENTS);
  try {
    const res = await api('GET', `/api/history?since=${since}&until=${seq}&limit=${RECENT_EVENTS}`);
    const events = res.data.events;
    for (const event of events) {
      state.bySeq.set(event.seq, event);
    }
    // Oldest first into the feed, so the newest ends on top.
    for (const event of events.slice(-FEED_SIZE)) {
      addToFeed(event, false);
    }
    if (state.loaded) {
      renderAliases();
    }
  } catch (error) {
    $('load-error').textContent = `cannot read the history: ${errorText(error)}`;
    $('load-error').hidden = false;
  }
}

async function start() {
  let seq = 0;
  try {
    // /healthz needs no token; its seq is where the live stream starts, so
    // nothing committed after the lists below are read is missed.
    const health = await (await fetch('/healthz', { cache: 'no-store' })).json();
    seq = health.seq || 0;
    state.node = typeof health.node === 'string' ? health.node : null;
  } catch (error) {
    $('load-error').textContent = errorText(error);
    $('load-error').hidden = false;
  }
  setSeq(seq);
  follow(seq, {
    event: onEvent,
    reset: () => scheduleRefresh(),
    state: setLive,
  });
  await Promise.all([refresh(), loadRecent(seq)]);
  // Node records come and go without events (heartbeats, expiry).
  setInterval(() => {
    if (state.nodes !== null) {
      scheduleRefresh();
    }
  }, 5000);
  // Relative times move on.
  setInterval(() => {
    for (const node of document.querySelectorAll('time[datetime]')) {
      node.textContent = ago(node.getAttribute('datetime'));
    }
  }, 15000);
}

// ---------------------------------------------------------------------------
// Token prompt.

/** The pending token prompt's resolve function, or null. */
let tokenPrompt = null;

/** Asks for a token; resolves once one is set (see api.js onTokenNeeded). */
function askToken(message) {
  return new Promise((resolve) => {
    tokenPrompt = resolve;
    $('token-button').hidden = false;
    $('token-reason').textContent = message;
    $('token-input').value = '';
    openTokenDialog();
  });
}

function openTokenDialog() {
  const dialog = $('token-dialog');
  if (!dialog.open) {
    dialog.showModal();
  }
  $('token-input').focus();
}

function submitToken(submit) {
  submit.preventDefault();
  const secret = $('token-input').value.trim();
  if (!secret) {
    $('token-reason').textContent = 'type the token first';
    return;
  }
  setToken(secret);
  $('token-dialog').close();
  const resolve = tokenPrompt;
  tokenPrompt = null;
  if (resolve) {
    resolve();
  }
}

/** The header's Token button: answers a pending prompt, or replaces the token. */
function changeToken() {
  if (tokenPrompt) {
    openTokenDialog();
    return;
  }
  askToken('give another token; it replaces the one this tab has').then(() => scheduleRefresh());
}

// ---------------------------------------------------------------------------
// Forms.

function confirmDelete(name) {
  return new Promise((resolve) => {
    const dialog = $('confirm-dialog');
    $('confirm-name').textContent = name;
    const done = (answer) => {
      dialog.close();
      resolve(answer);
    };
    $('confirm-form').onsubmit = (submit) => {
      submit.preventDefault();
      done(true);
    };
    $('confirm-cancel').onclick = () => done(false);
    dialog.oncancel = (cancel) => {
      cancel.preventDefault();
      done(false);
    };
    dialog.showModal();
    $('confirm-cancel').focus();
  });
}

async function submitPut(submit) {
  submit.preventDefault();
  const message = $('put-msg');
  const alias = $('put-alias').value.trim();
  const target = $('put-target').value.trim();
  if (!alias || !target) {
    showMessage(message, 'err', 'give an alias and a target');
    return;
  }
  showMessage(message, '', 'saving\u2026');
  try {
    const res = await api('PUT', aliasPath(alias), {
      target,
      prefix_matching: $('put-prefix').checked,
    });
    const verb = res.status === 201 ? 'created' : 'saved';
    showMessage(message, 'ok', `${verb} ${res.data.alias} \u2192 ${res.data.target}`);
    scheduleRefresh(res.data.alias.toLowerCase());
  } catch (error) {
    showMessage(message, 'err', errorText(error));
  }
}

async function deleteAlias(alias, returnFocus) {
  const message = $('delete-msg');
  if (!alias) {
    showMessage(message, 'err', 'give the alias to delete');
    return;
  }
  const confirmed = await confirmDelete(alias);
  if (returnFocus && returnFocus.isConnected) {
    returnFocus.focus();
  }
  if (!confirmed) {
    showMessage(message, '', 'nothing deleted');
    return;
  }
  showMessage(message, '', 'deleting\u2026');
  try {
    await api('DELETE', aliasPath(alias));
    showMessage(message, 'ok', `deleted ${alias}`);
    scheduleRefresh(alias.toLowerCase());
  } catch (error) {
    showMessage(message, 'err', errorText(error));
  }
}

async function searchHistory(nextPage) {
  const message = $('history-msg');
  let params;
  if (nextPage && state.historyParams) {
    params = new URLSearchParams(state.historyParams);
    params.set('since', String(state.historyNext));
  } else {
    params = new URLSearchParams();
    for (const field of ['alias', 'type', 'since', 'until']) {
      const value = $(`history-${field}`).value.trim();
      if (value) {
        params.set(field, value);
      }
    }
    params.set('limit', String(HISTORY_PAGE));
    state.historyParams = params.toString();
  }
  showMessage(message, '', 'searching\u2026');
  try {
    const res = await api('GET', `/api/history?${params}`);
    const results = $('history-results');
    if (!nextPage) {
      results.replaceChildren();
    }
    for (const event of res.data.events) {
      results.appendChild(eventItem(event));
    }
    state.historyNext = res.data.next;
    $('history-more').hidden = res.data.next === null || res.data.next === undefined;
    const count = results.children.length;
    showMessage(message, 'ok', count ? `${count} event${count === 1 ? '' : 's'}, oldest first` : 'no event matches');
  } catch (error) {
    showMessage(message, 'err', errorText(error));
  }
}

function onRowAction(click) {
  const button = click.target.closest('button[data-action]');
  if (!button) {
    return;
  }
  const row = button.closest('tr');
  const alias = row && row.aliasBody;
  if (!alias) {
    return;
  }
  if (button.dataset.action === 'repoint') {
    $('put-alias').value = alias.alias;
    $('put-target').value = alias.target;
    $('put-prefix').checked = alias.prefix_matching;
    $('change').scrollIntoView({ block: 'start' });
    $('put-target').focus();
    $('put-target').select();
  } else if (button.dataset.action === 'history') {
    $('history-alias').value = alias.alias;
    for (const field of ['type', 'since', 'until']) {
      $(`history-${field}`).value = '';
    }
    searchHistory(false).then(() => $('history-form').scrollIntoView({ block: 'start' }));
  } else if (button.dataset.action === 'delete') {
    $('delete-alias').value = alias.alias;
    deleteAlias(alias.alias, button);
  }
}

function onSort(click) {
  const header = click.target.closest('th[data-sort]');
  if (!header) {
    return;
  }
  const key = header.dataset.sort;
  state.sort = { key, dir: state.sort.key === key ? -state.sort.dir : 1 };
  for (const th of document.querySelectorAll('#alias-table th[data-sort]')) {
    if (th === header) {
      th.setAttribute('aria-sort', state.sort.dir === 1 ? 'ascending' : 'descending');
    } else {
      th.removeAttribute('aria-sort');
    }
  }
  renderGraph(renderAliases());
}

function wire() {
  onTokenNeeded(askToken);
  $('token-button').hidden = !token();
  $('token-button').addEventListener('click', changeToken);
  $('token-form').addEventListener('submit', submitToken);
  $('token-cancel').addEventListener('click', () => $('token-dialog').close());
  $('put-form').addEventListener('submit', submitPut);
  $('delete-form').addEventListener('submit', (submit) => {
    submit.preventDefault();
    deleteAlias($('delete-alias').value.trim(), $('delete-alias'));
  });
  $('history-form').addEventListener('submit', (submit) => {
    submit.preventDefault();
    searchHistory(false);
  });
  $('history-more').addEventListener('click', () => searchHistory(true));
  $('alias-rows').addEventListener('click', onRowAction);
  document.querySelector('#alias-table thead').addEventListener('click', onSort);
  const onFilter = () => {
    if (state.filter !== $('filter').value) {
      state.filter = $('filter').value;
      renderGraph(renderAliases());
    }
  };
  $('filter').addEventListener('input', onFilter);
  $('filter').addEventListener('change', onFilter);
}

wire();
start();
