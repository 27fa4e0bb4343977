'use strict';
/**
 * The official `openai` Node package against the Router's OpenAI-compatible HTTP door.
 * The door's base URL comes from SEKHA_OPENAI_BASE_URL (e.g. http://127.0.0.1:8080/v1); without it
 * every test fails: a missing service is a broken setup, not a reason to skip.
 */

const { describe, it } = require('node:test');
const assert = require('node:assert/strict');
const OpenAI = require('openai');

const BASE_URL = process.env.SEKHA_OPENAI_BASE_URL ?? '';

function client() {
  if (!BASE_URL) {
    throw new Error('SEKHA_OPENAI_BASE_URL not set: start the router with server.http_port and export its /v1 URL');
  }
  return new OpenAI({ baseURL: BASE_URL, apiKey: process.env.SEKHA_API_KEY ?? 'unused', maxRetries: 0 });
}

const USER = [{ role: 'user', content: 'hello from node' }];

describe('the HTTP door through the openai package', () => {
  it('answers a chat completion with usage', async () => {
    const reply = await client().chat.completions.create({ model: 'chatty', messages: USER });
    assert.equal(reply.choices[0].message.content, 'echo: hello from node');
    assert.equal(reply.choices[0].finish_reason, 'stop');
    assert.ok(reply.usage.total_tokens > 0);
  });

  it('streams deltas that concatenate to the text, usage last', async () => {
    const stream = await client().chat.completions.create({
      model: 'chatty',
      messages: USER,
      stream: true,
      stream_options: { include_usage: true },
    });
    let text = '';
    let usage = null;
    for await (const chunk of stream) {
      if (chunk.choices.length > 0) text += chunk.choices[0].delta.content ?? '';
      if (chunk.usage) usage = chunk.usage;
    }
    assert.equal(text, 'echo: hello from node');
    assert.ok(usage && usage.completion_tokens > 0);
  });

  it('embeds (the package asks for base64 and decodes it)', async () => {
    const reply = await client().embeddings.create({ model: 'sekha/embedding', input: ['a', 'b'] });
    assert.equal(reply.data.length, 2);
    assert.equal(reply.data[0].embedding.length, 8);
  });

  it('lists models with the task aliases', async () => {
    const ids = [];
    for await (const model of client().models.list()) ids.push(model.id);
    assert.ok(ids.includes('chatty') && ids.includes('sekha/chat_smart'), ids.join(','));
  });

  it('runs a tool call round trip', async () => {
    const tools = [
      {
        type: 'function',
        function: {
          name: 'get_weather',
          parameters: { type: 'object', properties: { city: { type: 'string' } }, required: ['city'] },
        },
      },
    ];
    const messages = [{ role: 'user', content: 'weather in Paris?' }];
    const first = await client().chat.completions.create({ model: 'toolbot', messages, tools });
    assert.equal(first.choices[0].finish_reason, 'tool_calls');
    const call = first.choices[0].message.tool_calls[0];
    assert.equal(call.function.name, 'get_weather');
    assert.deepEqual(JSON.parse(call.function.arguments), { city: 'Paris' });
    messages.push(first.choices[0].message, { role: 'tool', tool_call_id: call.id, content: '{"temp_c": 21}' });
    const final = await client().chat.completions.create({ model: 'toolbot', messages, tools });
    assert.equal(final.choices[0].message.content, '21 degrees in Paris.');
  });

  it('raises BadRequestError naming the param, and NotFoundError for an unknown model', async () => {
    await assert.rejects(
      client().chat.completions.create({ model: 'chatty', messages: USER, temperature: 7 }),
      (error) => error instanceof OpenAI.BadRequestError && error.param === 'temperature',
    );
    await assert.rejects(
      client().chat.completions.create({ model: 'no-such-model', messages: USER }),
      (error) => error instanceof OpenAI.NotFoundError && error.code === 'model_not_found',
    );
  });
});
