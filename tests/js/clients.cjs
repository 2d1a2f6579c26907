// aliasd's inference proxy as the official JavaScript clients (ollama-js,
// openai-node) see it: the same checks as tests/python/clients.py, run by
// tests/it/proxy_clients.rs with NODE_PATH at the installed packages.
'use strict';

const assert = require('node:assert/strict');
const { Ollama } = require('ollama');
const { OpenAI, NotFoundError, AuthenticationError } = require('openai');

const URL = process.env.ALIASD_URL;
const GUARDED_URL = process.env.ALIASD_GUARDED_URL;
const GUARDED_TOKEN = process.env.ALIASD_GUARDED_TOKEN;
const HI = [{ role: 'user', content: 'hi' }];
const NAMES = ['c2:latest', 'coder:latest', 'gone:latest', 'other:latest', 'qwen:latest'];

function check(what, got, want) {
  assert.deepEqual(got, want, what);
  console.log(`ok ${what}`);
}

// `type`: a class, or the `name` of one its package does not export
// (ollama-js's `ResponseError`).
async function rejects(what, promise, type, test) {
  try {
    await promise;
  } catch (e) {
    const ok = typeof type === 'string' ? e.name === type : e instanceof type;
    assert.ok(ok, `${what}: ${e}`);
    test(e);
    console.log(`ok ${what}`);
    return;
  }
  assert.fail(`${what}: did not fail`);
}

async function checkOllama() {
  const client = new Ollama({ host: URL });

  let res = await client.chat({ model: 'coder', messages: HI });
  check('ollama-js chat: model', res.model, 'coder');
  check('ollama-js chat: content', res.message.content, 'hello');

  const parts = [];
  for await (const part of await client.chat({ model: 'c2', messages: HI, stream: true })) {
    parts.push(part);
  }
  check('ollama-js chat stream: models', parts.map((p) => p.model), ['c2', 'c2']);
  check('ollama-js chat stream: content', parts.map((p) => p.message.content).join(''), 'hello');

  res = await client.generate({ model: 'my-bot', prompt: 'hi' });
  check('ollama-js generate (prefix alias): model', res.model, 'my-bot');
  check('ollama-js generate: response', res.response, 'hello');

  res = await client.embed({ model: 'coder', input: 'x' });
  check('ollama-js embed: model', res.model, 'coder');

  const listed = new Map((await client.list()).models.map((m) => [m.model, m]));
  check('ollama-js list: names', [...listed.keys()].sort(), NAMES);
  const coder = listed.get('coder:latest');
  const qwen = listed.get('qwen:latest');
  check('ollama-js list: an alias has its model digest', coder.digest, qwen.digest);
  assert.notEqual(String(coder.modified_at), String(qwen.modified_at), 'an alias has its own modified_at');

  res = await client.show({ model: 'coder' });
  check('ollama-js show: details', res.details.family, 'stand-in');

  await rejects('ollama-js dangling', client.chat({ model: 'lost', messages: HI }), 'ResponseError', (e) => {
    assert.equal(e.status_code, 404);
    assert.match(e.error, /dangling/);
  });
}

async function checkOpenAI() {
  const client = new OpenAI({ baseURL: `${URL}/v1`, apiKey: 'unused', maxRetries: 0 });

  let res = await client.chat.completions.create({ model: 'coder', messages: HI });
  check('openai-node chat: model', res.model, 'coder');
  check('openai-node chat: content', res.choices[0].message.content, 'hello');

  const chunks = [];
  for await (const chunk of await client.chat.completions.create({ model: 'c2', messages: HI, stream: true })) {
    chunks.push(chunk);
  }
  check('openai-node chat stream: models', [...new Set(chunks.map((c) => c.model))], ['c2']);
  check('openai-node chat stream: content', chunks.map((c) => c.choices[0].delta.content ?? '').join(''), 'hello');

  const ids = [];
  for await (const model of client.models.list()) {
    ids.push(model.id);
  }
  check('openai-node models.list', ids.sort(), NAMES);

  for (const asked of ['coder', 'c2:latest', 'my-bot']) {
    const model = await client.models.retrieve(asked);
    check(`openai-node models.retrieve(${asked}): id`, model.id, asked);
  }

  await rejects('openai-node dangling', client.chat.completions.create({ model: 'lost', messages: HI }), NotFoundError, (e) => {
    assert.equal(e.status, 404);
    assert.equal(e.type, 'not_found_error');
    assert.match(e.error.message, /dangling/);
  });

  const wrong = new OpenAI({ baseURL: `${GUARDED_URL}/v1`, apiKey: 'wrong', maxRetries: 0 });
  await rejects('openai-node wrong key', wrong.models.list(), AuthenticationError, (e) => {
    assert.equal(e.status, 401);
    assert.equal(e.code, 'invalid_api_key');
    assert.equal(e.error.message, 'invalid token');
  });

  const right = new OpenAI({ baseURL: `${GUARDED_URL}/v1`, apiKey: GUARDED_TOKEN, maxRetries: 0 });
  res = await right.chat.completions.create({ model: 'coder', messages: HI });
  check('openai-node with the token: chat model', res.model, 'coder');
}

(async () => {
  await checkOllama();
  await checkOpenAI();
  console.log('all checks passed');
})().catch((e) => {
  console.error(e);
  process.exit(1);
});
