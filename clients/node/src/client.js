'use strict';
/**
 * Node.js client for the Sekha Router and Embedding services.
 *
 * The protos are loaded at run time from the repository's `protos/` directory
 * (no generated code to keep in sync). Field names are lowerCamelCase
 * (`keepCase: false`), enums are their string names (`'TASK_CHAT_SMART'`),
 * 64-bit integers are JavaScript numbers, and a set oneof is named by its
 * virtual field (a StreamChat event has `event === 'delta'` or `'summary'`).
 *
 * Every unary RPC becomes a promise-returning method named after the RPC in
 * lowerCamelCase (`route`, `chat`, `searchDocuments`, ...); server-streaming
 * RPCs (`streamChat`) return the call, which is an async iterable of messages.
 */

const path = require('node:path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

/** Directory holding `sekha/router/v1/...` and `sekha/embedding/v1/...`. */
const PROTO_ROOT = path.resolve(__dirname, '..', '..', '..', 'protos');
/** Directory holding the standard `grpc/health/v1/health.proto`. */
const HEALTH_PROTO_ROOT = path.resolve(__dirname, '..', 'proto');

const PROTO_FILES = Object.freeze([
  'sekha/router/v1/router_service.proto',
  'sekha/embedding/v1/embedding_service.proto',
  'grpc/health/v1/health.proto',
]);

/** proto-loader options; one set for every service so messages look alike. */
const LOADER_OPTIONS = Object.freeze({
  keepCase: false,
  longs: Number,
  enums: String,
  defaults: true,
  oneofs: true,
  includeDirs: [PROTO_ROOT, HEALTH_PROTO_ROOT],
});

const DEFAULT_DEADLINE_MS = 30_000;

// Round robin makes a `dns:///<headless-service>:port` target spread calls over
// every pod the name resolves to; with a single address it changes nothing.
const DEFAULT_CHANNEL_OPTIONS = Object.freeze({
  'grpc.service_config': JSON.stringify({ loadBalancingConfig: [{ round_robin: {} }] }),
});

/**
 * Loads the Sekha and gRPC health protos.
 *
 * @param {string} [protoRoot] directory of the Sekha protos (defaults to the repository's `protos/`)
 * @returns {grpc.GrpcObject} the loaded packages: `sekha.router.v1`, `sekha.embedding.v1`, `grpc.health.v1`
 */
function loadSekhaProtos(protoRoot = PROTO_ROOT) {
  const options = { ...LOADER_OPTIONS, includeDirs: [protoRoot, HEALTH_PROTO_ROOT] };
  const definition = protoLoader.loadSync([...PROTO_FILES], options);
  return grpc.loadPackageDefinition(definition);
}

/**
 * @typedef {object} ClientOptions
 * @property {grpc.ChannelCredentials} [credentials] defaults to an insecure channel
 * @property {Record<string, string>} [metadata] sent with every call (for example an API key header)
 * @property {number} [deadlineMs] default deadline of each call, 30 s unless set
 * @property {object} [channelOptions] extra grpc-js channel options
 * @property {grpc.GrpcObject} [protos] an already loaded result of loadSekhaProtos()
 */

/**
 * @typedef {object} CallOptions
 * @property {number} [deadlineMs] this call's deadline, overriding the client's
 * @property {Record<string, string>} [metadata] added to the client's metadata for this call
 */

function buildMetadata(defaults, extra) {
  const metadata = new grpc.Metadata();
  for (const [key, value] of Object.entries({ ...defaults, ...extra })) {
    metadata.set(key, value);
  }
  return metadata;
}

/**
 * Wraps a grpc-js stub: a promise method per unary RPC, the raw call (an async
 * iterable) per server-streaming RPC, plus `health()` and `close()`.
 */
function wrapStub(ServiceStub, HealthStub, target, options) {
  const credentials = options.credentials ?? grpc.credentials.createInsecure();
  const channelOptions = { ...DEFAULT_CHANNEL_OPTIONS, ...options.channelOptions };
  const stub = new ServiceStub(target, credentials, channelOptions);
  const healthStub = new HealthStub(target, credentials, { channelOverride: stub.getChannel() });
  const defaultMetadata = options.metadata ?? {};
  const defaultDeadlineMs = options.deadlineMs ?? DEFAULT_DEADLINE_MS;

  const callArgs = (callOptions = {}) => ({
    metadata: buildMetadata(defaultMetadata, callOptions.metadata),
    deadline: new Date(Date.now() + (callOptions.deadlineMs ?? defaultDeadlineMs)),
  });

  const unary = (receiver, methodName) => (request = {}, callOptions = {}) => {
    const { metadata, deadline } = callArgs(callOptions);
    return new Promise((resolve, reject) => {
      receiver[methodName](request, metadata, { deadline }, (error, response) => {
        if (error) reject(error);
        else resolve(response);
      });
    });
  };

  const client = {
    /** The underlying grpc-js stub, for anything the wrapper does not cover. */
    stub,
    /**
     * Runs a gRPC health check.
     * @param {string} [service] the service name; empty checks the whole server
     * @returns {Promise<string>} the serving status, e.g. 'SERVING'
     */
    async health(service = '', callOptions = {}) {
      const response = await unary(healthStub, 'Check')({ service }, callOptions);
      return response.status;
    },
    /** Closes the channel; pending calls fail with CANCELLED. */
    close() {
      stub.close();
    },
  };

  for (const [rpcName, method] of Object.entries(ServiceStub.service)) {
    const jsName = method.originalName ?? rpcName;
    if (method.requestStream) {
      throw new Error(`client-streaming RPC ${rpcName} is not supported by this wrapper`);
    }
    if (method.responseStream) {
      client[jsName] = (request = {}, callOptions = {}) => {
        const { metadata, deadline } = callArgs(callOptions);
        return stub[rpcName](request, metadata, { deadline });
      };
    } else {
      client[jsName] = unary(stub, rpcName);
    }
  }
  return client;
}

/**
 * Creates a Router service client.
 *
 * Methods: route, chat, streamChat, embed, listModels, getProviderStatus,
 * getSpend, health, close.
 *
 * @param {string} target `host:port`, or `dns:///name:port` for client-side load balancing
 * @param {ClientOptions} [options]
 */
function createRouterClient(target, options = {}) {
  const protos = options.protos ?? loadSekhaProtos();
  return wrapStub(protos.sekha.router.v1.RouterService, protos.grpc.health.v1.Health, target, options);
}

/**
 * Creates an Embedding service client.
 *
 * Methods: upsertDocuments, getDocuments, deleteDocuments, searchDocuments,
 * listCollections, deleteCollection, adoptCollection, startMigration,
 * getMigration, health, close.
 *
 * @param {string} target `host:port`, or `dns:///name:port` for client-side load balancing
 * @param {ClientOptions} [options]
 */
function createEmbeddingClient(target, options = {}) {
  const protos = options.protos ?? loadSekhaProtos();
  return wrapStub(protos.sekha.embedding.v1.EmbeddingService, protos.grpc.health.v1.Health, target, options);
}

/**
 * Reads a StreamChat call to its end.
 *
 * @param {AsyncIterable<object>} stream the result of `router.streamChat(...)`
 * @returns {Promise<{text: string, deltas: string[], toolCallDeltas: object[], reasoning: string, summary: object}>}
 *   the summary's `toolCalls` hold the complete calls; `toolCallDeltas` are the pieces as they came
 * @throws the call's gRPC error when the stream fails, or an Error when it ends without a summary
 */
async function collectChatStream(stream) {
  const deltas = [];
  const toolCallDeltas = [];
  const reasoning = [];
  let summary = null;
  for await (const message of stream) {
    if (summary !== null) {
      throw new Error('StreamChat sent a message after its summary');
    }
    if (message.event === 'delta') {
      deltas.push(message.delta.text);
    } else if (message.event === 'toolCall') {
      toolCallDeltas.push(message.toolCall);
    } else if (message.event === 'reasoning') {
      reasoning.push(message.reasoning.text);
    } else if (message.event === 'summary') {
      summary = message.summary;
    }
  }
  if (summary === null) {
    throw new Error('StreamChat ended without a summary');
  }
  return { text: deltas.join(''), deltas, toolCallDeltas, reasoning: reasoning.join(''), summary };
}

/**
 * Builds a one-part text message.
 *
 * @param {'ROLE_SYSTEM'|'ROLE_USER'|'ROLE_ASSISTANT'} role
 * @param {string} text
 */
function textMessage(role, text) {
  return { role, parts: [{ text }] };
}

/** A JSON value as a google.protobuf.Value message (the shape proto-loader sends). */
function valueFromJson(value) {
  if (value === null || value === undefined) return { nullValue: 'NULL_VALUE' };
  if (typeof value === 'string') return { stringValue: value };
  if (typeof value === 'number') return { numberValue: value };
  if (typeof value === 'boolean') return { boolValue: value };
  if (Array.isArray(value)) return { listValue: { values: value.map(valueFromJson) } };
  return { structValue: structFromJson(value) };
}

/**
 * A plain JSON object (a JSON Schema, say) as the google.protobuf.Struct the contract carries.
 *
 * @param {Record<string, unknown>} object
 */
function structFromJson(object) {
  const fields = {};
  for (const [key, value] of Object.entries(object)) fields[key] = valueFromJson(value);
  return { fields };
}

function jsonFromValue(value) {
  switch (value.kind) {
    case 'stringValue':
    case 'numberValue':
    case 'boolValue':
      return value[value.kind];
    case 'listValue':
      return (value.listValue.values ?? []).map(jsonFromValue);
    case 'structValue':
      return jsonFromStruct(value.structValue);
    default:
      return null;
  }
}

/** A google.protobuf.Struct received from the router as a plain JSON object. */
function jsonFromStruct(struct) {
  const out = {};
  for (const [key, value] of Object.entries(struct?.fields ?? {})) out[key] = jsonFromValue(value);
  return out;
}

/**
 * A tool the model may call, from the JSON Schema of its arguments.
 *
 * @param {string} name
 * @param {Record<string, unknown>} [parameters] JSON Schema of the arguments; omitted: none
 * @param {string} [description]
 */
function toolFromSchema(name, parameters, description = '') {
  const tool = { name, description };
  if (parameters) tool.parameters = structFromJson(parameters);
  return tool;
}

/**
 * A response format holding the answer to a JSON Schema; the response's
 * `conformance.conforms` says whether it did.
 */
function jsonSchemaFormat(schema, name = 'response', strict = true) {
  return { type: 'RESPONSE_FORMAT_TYPE_JSON_SCHEMA', jsonSchema: { name, strict, schema: structFromJson(schema) } };
}

/**
 * Continues a conversation after the model called tools: the assistant turn
 * with its calls, then a ROLE_TOOL message per call with its result (objects
 * are sent as JSON text).
 *
 * @param {object[]} messages the request's messages, extended in place and returned
 * @param {{toolCalls: object[]}} reply a Chat response (or StreamChat summary)
 * @param {Record<string, unknown>} results result per call id
 */
function appendToolResults(messages, reply, results) {
  messages.push({ role: 'ROLE_ASSISTANT', parts: [], toolCalls: reply.toolCalls });
  for (const call of reply.toolCalls) {
    if (!(call.id in results)) throw new Error(`no result for tool call ${call.id}`);
    const result = results[call.id];
    const text = typeof result === 'string' ? result : JSON.stringify(result);
    messages.push({ role: 'ROLE_TOOL', toolCallId: call.id, parts: [{ text }] });
  }
  return messages;
}

module.exports = {
  PROTO_ROOT,
  loadSekhaProtos,
  createRouterClient,
  createEmbeddingClient,
  collectChatStream,
  textMessage,
  structFromJson,
  jsonFromStruct,
  toolFromSchema,
  jsonSchemaFormat,
  appendToolResults,
  status: grpc.status,
  credentials: grpc.credentials,
};
