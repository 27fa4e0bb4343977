'use strict';
/**
 * Walks through the Sekha services from Node.js: Route, Chat, StreamChat,
 * then UpsertDocuments and SearchDocuments.
 *
 *   SEKHA_ROUTER_TARGET=localhost:50051 SEKHA_EMBEDDING_TARGET=localhost:50052 npm run demo
 */

const {
  createRouterClient,
  createEmbeddingClient,
  loadSekhaProtos,
  textMessage,
} = require('../src/client.js');

const ROUTER_TARGET = process.env.SEKHA_ROUTER_TARGET ?? 'localhost:50051';
const EMBEDDING_TARGET = process.env.SEKHA_EMBEDDING_TARGET ?? 'localhost:50052';

async function main() {
  const protos = loadSekhaProtos();
  const router = createRouterClient(ROUTER_TARGET, { protos });
  const embedding = createEmbeddingClient(EMBEDDING_TARGET, { protos });
  try {
    const question = [textMessage('ROLE_USER', 'In one sentence, what is a circuit breaker?')];
    const routing = { task: 'TASK_CHAT_SMART' };

    const { decision } = await router.route({ routing, messages: question, maxTokens: 100 });
    const fallbacks = decision.fallbacks.map((c) => `${c.providerId}/${c.model}`).join(', ') || 'none';
    console.log(`Route: ${decision.chosen.providerId}/${decision.chosen.model} (${decision.reason})`);
    console.log(`       fallbacks: ${fallbacks}`);

    const chat = await router.chat({ routing, messages: question, generation: { maxTokens: 100 } });
    const cost = !chat.cost ? 'no cost reported' : chat.cost.priceUnknown ? 'price unknown' : `$${chat.cost.costUsd}`;
    console.log(`Chat: ${chat.text}`);
    console.log(`      ${chat.usage.inputTokens} in / ${chat.usage.outputTokens} out tokens, ${cost}`);

    process.stdout.write('StreamChat: ');
    let summary = null;
    for await (const message of router.streamChat({ routing, messages: question, generation: { maxTokens: 100 } })) {
      if (message.event === 'delta') process.stdout.write(message.delta.text);
      else summary = message.summary;
    }
    console.log(`\n            served by ${summary.routing.chosen.providerId}/${summary.routing.chosen.model}`);

    const documents = [
      { id: 'demo-1', text: 'A circuit breaker stops calls to a failing dependency for a while.' },
      { id: 'demo-2', text: 'Reciprocal rank fusion merges ranked lists from several searches.' },
      { id: 'demo-3', text: 'Chroma stores vectors in collections with an HNSW index.' },
    ];
    await embedding.upsertDocuments({ base: 'demo', documents });
    const search = await embedding.searchDocuments({ base: 'demo', query: 'merging search results', topK: 3 });
    console.log('SearchDocuments:');
    for (const hit of search.hits) {
      console.log(`  ${hit.score.toFixed(4)}  ${hit.document.id}  ${hit.document.text}`);
    }
  } finally {
    router.close();
    embedding.close();
  }
}

main().catch((error) => {
  console.error(`demo failed: ${error.code !== undefined ? `gRPC status ${error.code}: ` : ''}${error.message}`);
  process.exitCode = 1;
});
