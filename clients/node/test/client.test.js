'use strict';
/**
 * End-to-end test of the Node client against running Router and Embedding
 * services. The targets come from SEKHA_ROUTER_TARGET and
 * SEKHA_EMBEDDING_TARGET; without them every test fails (a missing service is
 * a broken setup, not a reason to skip).
 */

const { describe, it, before, after } = require('node:test');
const assert = require('node:assert/strict');

const {
  loadSekhaProtos,
  createRouterClient,
  createEmbeddingClient,
  collectChatStream,
  textMessage,
  toolFromSchema,
  appendToolResults,
  status,
} = require('../src/client.js');

const ROUTER_TARGET = process.env.SEKHA_ROUTER_TARGET ?? '';
const EMBEDDING_TARGET = process.env.SEKHA_EMBEDDING_TARGET ?? '';

function requireTargets() {
  const missing = [];
  if (!ROUTER_TARGET) missing.push('SEKHA_ROUTER_TARGET');
  if (!EMBEDDING_TARGET) missing.push('SEKHA_EMBEDDING_TARGET');
  if (missing.length > 0) {
    throw new Error(
      `${missing.join(' and ')} not set: start the services and export host:port targets, e.g. ` +
        'SEKHA_ROUTER_TARGET=127.0.0.1:50051 SEKHA_EMBEDDING_TARGET=127.0.0.1:50052 npm test',
    );
  }
}

/** Health is optional: a server without the health service still passes. */
async function assertServingIfHealthImplemented(t, client) {
  try {
    assert.equal(await client.health(), 'SERVING');
  } catch (error) {
    if (error.code === status.UNIMPLEMENTED) {
      t.diagnostic('health service not implemented; skipped the SERVING check');
      return;
    }
    throw error;
  }
}

const CHAT_ROUTING = { task: 'TASK_CHAT_SMART' };

// A failure of its own, so a missing target reads as one clear failed test
// rather than only as cancelled suites.
it('has SEKHA_ROUTER_TARGET and SEKHA_EMBEDDING_TARGET set', () => {
  requireTargets();
});

describe('router service', () => {
  let router;

  before(() => {
    requireTargets();
    router = createRouterClient(ROUTER_TARGET, { protos: loadSekhaProtos() });
  });

  after(() => router?.close());

  it('reports SERVING when it implements gRPC health', async (t) => {
    await assertServingIfHealthImplemented(t, router);
  });

  it('Route chooses a candidate for a chat task', async () => {
    const response = await router.route({
      routing: CHAT_ROUTING,
      messages: [textMessage('ROLE_USER', 'Which model would answer this?')],
    });
    const chosen = response.decision?.chosen;
    assert.ok(chosen, 'decision.chosen is missing');
    assert.ok(chosen.providerId.length > 0, 'chosen.providerId is empty');
    assert.ok(chosen.model.length > 0, 'chosen.model is empty');
    assert.equal(response.decision.task, 'TASK_CHAT_SMART');
  });

  it('Chat returns text and usage', async () => {
    const response = await router.chat({
      routing: CHAT_ROUTING,
      messages: [textMessage('ROLE_USER', 'Say hello.')],
      generation: { maxTokens: 32 },
      requestId: 'node-chat-1',
    });
    assert.ok(response.text.length > 0, 'Chat text is empty');
    assert.ok(response.usage, 'Chat usage is missing');
    assert.ok(response.usage.inputTokens > 0, 'usage.inputTokens is not positive');
    assert.equal(response.requestId, 'node-chat-1');
  });

  it('StreamChat sends deltas, then exactly one summary', async () => {
    const stream = router.streamChat({
      routing: CHAT_ROUTING,
      messages: [textMessage('ROLE_USER', 'Tell me a short story.')],
      generation: { maxTokens: 64 },
    });
    const { text, deltas, summary } = await collectChatStream(stream);
    assert.ok(deltas.length > 0, 'no delta before the summary');
    assert.ok(text.length > 0, 'the deltas carry no text');
    assert.ok(summary.usage, 'summary.usage is missing');
    assert.ok(summary.routing?.chosen, 'summary.routing.chosen is missing');
  });

  it('Chat with tools returns the tool call, and the result message gets the answer', async () => {
    // The test's router has one model with CAPABILITY_TOOLS, scripted to call get_weather.
    const weather = toolFromSchema(
      'get_weather',
      { type: 'object', properties: { city: { type: 'string' } }, required: ['city'] },
      'Current weather in a city',
    );
    const request = {
      messages: [textMessage('ROLE_USER', 'Weather in Paris?')],
      tools: [weather],
      toolChoice: { mode: 'TOOL_CHOICE_MODE_REQUIRED' },
      generation: { maxTokens: 32 },
    };
    const first = await router.chat(request);
    assert.equal(first.finishReason, 'FINISH_REASON_TOOL_CALLS');
    assert.equal(first.toolCalls.length, 1);
    const [call] = first.toolCalls;
    assert.equal(call.name, 'get_weather');
    assert.equal(call.id, 'call_node');
    assert.deepEqual(JSON.parse(call.arguments), { city: 'Paris' });

    appendToolResults(request.messages, first, { [call.id]: { temperature: 21 } });
    const stream = router.streamChat(request);
    const { toolCallDeltas, summary } = await collectChatStream(stream);
    assert.equal(toolCallDeltas[0].name, 'get_weather');
    assert.equal(toolCallDeltas.map((d) => d.arguments).join(''), call.arguments);
    assert.deepEqual(summary.toolCalls.map((c) => c.id), ['call_node']);
  });

  it('Chat without messages is rejected with INVALID_ARGUMENT', async () => {
    await assert.rejects(router.chat({ routing: CHAT_ROUTING, messages: [] }), (error) => {
      assert.equal(error.code, status.INVALID_ARGUMENT, `got gRPC status ${error.code}: ${error.details}`);
      return true;
    });
  });
});

describe('embedding service', () => {
  let embedding;

  before(() => {
    requireTargets();
    embedding = createEmbeddingClient(EMBEDDING_TARGET, { deadlineMs: 60_000 });
  });

  after(() => embedding?.close());

  it('reports SERVING when it implements gRPC health', async (t) => {
    await assertServingIfHealthImplemented(t, embedding);
  });

  it('SearchDocuments ranks the document equal to the query first', async () => {
    const documents = [
      { id: 'node-doc-tides', text: 'The moon pulls the oceans and makes the tides.' },
      { id: 'node-doc-bread', text: 'Sourdough bread rises slowly with wild yeast.' },
      { id: 'node-doc-rust', text: 'The borrow checker keeps Rust programs memory safe.' },
    ].map((doc) => ({ ...doc, metadata: { source: { stringValue: 'node-test' } } }));

    const upserted = await embedding.upsertDocuments({ base: 'nodetest', documents });
    assert.equal(upserted.upsertedCount, documents.length);
    assert.ok(upserted.collections.length > 0, 'no collection was written');

    const wanted = documents[1];
    const response = await embedding.searchDocuments({ base: 'nodetest', query: wanted.text, topK: 3 });
    assert.ok(response.hits.length > 0, 'the search returned no hit');
    assert.equal(response.hits[0].document.id, wanted.id);
    assert.equal(response.hits[0].document.text, wanted.text);
  });
});
