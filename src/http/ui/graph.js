// The chain graph: alias -> alias -> model, drawn as SVG.
//
// Layered layout: models (and missing targets) in the right-most column,
// each alias one column left of what it points at, so a chain reads left to
// right. Within a column, nodes are ordered by the position of their targets
// (the barycenter heuristic), which keeps most edges from crossing. Every
// label is set with textContent.

const SVG = 'http://www.w3.org/2000/svg';
const COLUMN = 200;
const NODE_WIDTH = 160;
const NODE_HEIGHT = 26;
const ROW = 36;
const PAD = 8;
const MAX_LABEL = 21;
/** More nodes than this are left out (the filter narrows the graph). */
export const MAX_NODES = 300;

function el(name, attributes, parent) {
  const node = document.createElementNS(SVG, name);
  for (const [key, value] of Object.entries(attributes || {})) {
    node.setAttribute(key, String(value));
  }
  if (parent) {
    parent.appendChild(node);
  }
  return node;
}

function short(label) {
  return label.length > MAX_LABEL ? label.slice(0, MAX_LABEL - 1) + '\u2026' : label;
}

/**
 * Draws into `svg` the chains of `aliases` (Alias bodies) down to `models`
 * (model bodies). `shownAliases` is the subset to start from (the filter);
 * every alias on their chains is drawn too, and, when `allModels`, every
 * model. Returns how many nodes were left out.
 */
export function drawGraph(svg, aliases, models, shownAliases, allModels) {
  const byKey = new Map(aliases.map((a) => [a.alias.toLowerCase(), a]));
  const modelKeys = new Map(models.map((m) => [m.name.toLowerCase(), m]));
  const nodes = new Map();

  function targetNode(target) {
    const key = target.toLowerCase();
    if (byKey.has(key)) {
      return addAlias(byKey.get(key));
    }
    const id = (modelKeys.has(key) ? 'm:' : 'x:') + key;
    if (!nodes.has(id)) {
      nodes.set(id, {
        id,
        label: modelKeys.has(key) ? modelKeys.get(key).name : target,
        kind: modelKeys.has(key) ? 'model' : 'missing',
        depth: 0,
        to: null,
      });
    }
    return nodes.get(id);
  }

  // Iterative over the chain, so a long chain cannot overflow the stack; a
  // cycle (which the API refuses) would stop at the first repeat.
  function addAlias(alias) {
    const chain = [];
    let current = alias;
    const seen = new Set();
    let end = null;
    while (current) {
      const id = 'a:' + current.alias.toLowerCase();
      if (nodes.has(id)) {
        end = nodes.get(id);
        break;
      }
      if (seen.has(id)) {
        break;
      }
      seen.add(id);
      chain.push(current);
      const next = byKey.get(current.target.toLowerCase());
      if (!next) {
        end = targetNode(current.target);
        break;
      }
      current = next;
    }
    for (let idx = chain.length - 1; idx >= 0; idx--) {
      const a = chain[idx];
      const node = {
        id: 'a:' + a.alias.toLowerCase(),
        label: a.alias,
        kind: 'alias',
        state: a.state,
        prefix: a.prefix_matching,
        depth: end ? end.depth + 1 : 1,
        to: end,
      };
      nodes.set(node.id, node);
      end = node;
    }
    return nodes.get('a:' + alias.alias.toLowerCase());
  }

  if (allModels) {
    for (const model of models) {
      targetNode(model.name);
    }
  }
  for (const alias of shownAliases) {
    if (nodes.size >= MAX_NODES) {
      break;
    }
    addAlias(alias);
  }
  const leftOut = shownAliases.filter((a) => !nodes.has('a:' + a.alias.toLowerCase())).length;

  // Columns by depth; the right-most holds the models.
  const columns = [];
  for (const node of nodes.values()) {
    (columns[node.depth] = columns[node.depth] || []).push(node);
  }
  const maxDepth = columns.length - 1;
  for (let depth = 0; depth <= maxDepth; depth++) {
    const column = columns[depth] || [];
    if (depth === 0) {
      column.sort((a, b) => a.label.localeCompare(b.label));
    } else {
      const row = (node) => (node.to ? node.to.row : 0);
      column.sort((a, b) => row(a) - row(b) || a.label.localeCompare(b.label));
    }
    column.forEach((node, idx) => {
      node.row = idx;
    });
  }
  const rows = Math.max(1, ...columns.map((c) => (c ? c.length : 0)));
  const width = PAD * 2 + NODE_WIDTH + Math.max(0, maxDepth) * COLUMN;
  const height = PAD * 2 + rows * ROW;

  svg.replaceChildren();
  svg.setAttribute('viewBox', `0 0 ${width} ${height}`);
  svg.setAttribute('width', String(width));
  svg.setAttribute('height', String(height));
  const defs = el('defs', {}, svg);
  const marker = el('marker', {
    id: 'arrow',
    viewBox: '0 0 10 10',
    refX: 10,
    refY: 5,
    markerWidth: 7,
    markerHeight: 7,
    orient: 'auto-start-reverse',
  }, defs);
  el('path', { d: 'M 0 0 L 10 5 L 0 10 z', class: 'arrow-head' }, marker);

  const x = (node) => PAD + (maxDepth - node.depth) * COLUMN;
  const y = (node) => PAD + node.row * ROW;
  const edges = el('g', { class: 'edges' }, svg);
  for (const node of nodes.values()) {
    if (!node.to) {
      continue;
    }
    const x1 = x(node) + NODE_WIDTH;
    const y1 = y(node) + NODE_HEIGHT / 2;
    const x2 = x(node.to) - 2;
    const y2 = y(node.to) + NODE_HEIGHT / 2;
    const mid = (x1 + x2) / 2;
    el('path', {
      d: `M ${x1} ${y1} C ${mid} ${y1}, ${mid} ${y2}, ${x2} ${y2}`,
      class: 'edge' + (node.state && node.state !== 'active' ? ' edge-' + node.state : ''),
      'marker-end': 'url(#arrow)',
    }, edges);
  }
  const layer = el('g', { class: 'nodes' }, svg);
  for (const node of nodes.values()) {
    const kind = node.kind === 'alias' ? 'node-alias state-' + node.state : 'node-' + node.kind;
    const group = el('g', {
      class: 'node ' + kind,
      transform: `translate(${x(node)} ${y(node)})`,
      'data-node': node.label,
    }, layer);
    const title = el('title', {}, group);
    title.textContent = describe(node);
    el('rect', { width: NODE_WIDTH, height: NODE_HEIGHT, rx: 6, ry: 6 }, group);
    const text = el('text', { x: 10, y: NODE_HEIGHT / 2, 'dominant-baseline': 'central' }, group);
    text.textContent = short(node.label) + (node.prefix ? '*' : '');
  }
  return leftOut;
}

function describe(node) {
  if (node.kind === 'model') {
    return `model ${node.label}`;
  }
  if (node.kind === 'missing') {
    return `${node.label}: not in the store`;
  }
  const prefix = node.prefix ? 'prefix alias' : 'alias';
  return `${prefix} ${node.label} (${node.state}) \u2192 ${node.to ? node.to.label : '?'}`;
}
