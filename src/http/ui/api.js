// Talking to aliasd: JSON calls, the token, and the live event stream.
//
// The token is kept for this tab only (sessionStorage) and sent as
// `Authorization: Bearer` on every call, the event stream included; it never
// goes into a URL. The stream is read with fetch() and parsed here, because
// EventSource cannot send headers.

const TOKEN_KEY = 'aliasd.token';

/** An answer of the API that is not a success: its status and its error text. */
export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

/** The token of this tab, or null. */
export function token() {
  return sessionStorage.getItem(TOKEN_KEY);
}

/** Keeps `secret` as this tab's token (null forgets it). */
export function setToken(secret) {
  if (secret) {
    sessionStorage.setItem(TOKEN_KEY, secret);
  } else {
    sessionStorage.removeItem(TOKEN_KEY);
  }
}

// Who asks the person for a token: set by the page with onTokenNeeded. It
// gets the server's 401 message and returns a promise that resolves once a
// new token is set. Calls refused with 401 wait for it, then retry.
let askForToken = () => Promise.reject(new ApiError(401, 'a token is needed'));
let pendingAsk = null;

/** Sets the function that asks for a token (see askForToken above). */
export function onTokenNeeded(ask) {
  askForToken = ask;
}

/** One prompt for every call refused at the same time. */
function needToken(message) {
  if (!pendingAsk) {
    pendingAsk = askForToken(message).finally(() => {
      pendingAsk = null;
    });
  }
  return pendingAsk;
}

function headers(extra) {
  const all = Object.assign({}, extra);
  const secret = token();
  if (secret) {
    all.Authorization = 'Bearer ' + secret;
  }
  return all;
}

/**
 * Calls the API: `method path` with an optional JSON body. Resolves to
 * `{status, data}`; rejects with an ApiError carrying the API's own error
 * text for any other status, or a TypeError when aliasd cannot be reached.
 * A 401 asks for a token and tries again with it.
 */
export async function api(method, path, body) {
  for (;;) {
    const init = {
      method,
      headers: headers({ Accept: 'application/json' }),
      cache: 'no-store',
    };
    if (body !== undefined) {
      init.headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(body);
    }
    const response = await fetch(path, init);
    let data = null;
    try {
      data = await response.json();
    } catch (_) {
      data = null;
    }
    const message = data && typeof data.error === 'string' ? data.error : null;
    if (response.status === 401) {
      await needToken(message || 'a token is needed');
      continue;
    }
    if (!response.ok) {
      throw new ApiError(response.status, message || `HTTP ${response.status}`);
    }
    return { status: response.status, data };
  }
}

/** The path of an alias resource; names keep their `/` and `:`. */
export function aliasPath(name) {
  return '/api/aliases/' + encodeURIComponent(name).replace(/%2F/gi, '/').replace(/%3A/gi, ':');
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * Follows `/api/events` from `since` on, for ever: each event goes to
 * `handlers.event(event)`, a `reset` (the cursor is older than the kept
 * history) to `handlers.reset(data)`, and the connection's state
 * (`live`, `reconnecting`, `token`) to `handlers.state(state)`. A dropped
 * stream is resumed from the last seq received, so nothing is missed.
 */
export async function follow(since, handlers) {
  let cursor = since;
  let backoff = 500;
  for (;;) {
    try {
      const response = await fetch(`/api/events?since=${cursor}`, {
        headers: headers({ Accept: 'text/event-stream' }),
        cache: 'no-store',
      });
      if (response.status === 401) {
        let message = 'a token is needed';
        try {
          message = (await response.json()).error || message;
        } catch (_) {
          // The message stays generic.
        }
        handlers.state('token');
        await needToken(message);
        continue;
      }
      if (!response.ok || !response.body) {
        throw new Error(`the event stream answered ${response.status}`);
      }
      handlers.state('live');
      backoff = 500;
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = '';
      for (;;) {
        const { value, done } = await reader.read();
        if (done) {
          break;
        }
        buffer += value.replace(/\r\n?/g, '\n');
        let end;
        while ((end = buffer.indexOf('\n\n')) >= 0) {
          const block = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          const message = parseBlock(block);
          if (!message) {
            continue;
          }
          if (message.event === 'reset') {
            handlers.reset(JSON.parse(message.data));
          } else {
            const event = JSON.parse(message.data);
            handlers.event(event);
          }
          if (message.id !== null && /^\d+$/.test(message.id)) {
            cursor = Number(message.id);
          }
        }
      }
    } catch (_) {
      // Reconnected below, from the last seq received.
    }
    handlers.state('reconnecting');
    await sleep(backoff);
    backoff = Math.min(backoff * 2, 10000);
  }
}

/** One SSE message (`id`, `event`, `data` lines); null for a comment alone. */
function parseBlock(block) {
  let id = null;
  let event = 'message';
  const data = [];
  for (const line of block.split('\n')) {
    if (line === '' || line.startsWith(':')) {
      continue;
    }
    const colon = line.indexOf(':');
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? '' : line.slice(colon + 1);
    if (value.startsWith(' ')) {
      value = value.slice(1);
    }
    if (field === 'id') {
      id = value;
    } else if (field === 'event') {
      event = value;
    } else if (field === 'data') {
      data.push(value);
    }
  }
  return data.length ? { id, event, data: data.join('\n') } : null;
}
