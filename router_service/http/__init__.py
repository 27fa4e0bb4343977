"""The Router's OpenAI-compatible HTTP door: the same Gateway as the gRPC RPCs, reached over HTTP.

`schema` validates OpenAI request bodies, `convert` turns them into domain requests and domain
results into OpenAI responses, `errors` maps domain errors to OpenAI error JSON and HTTP statuses,
and `app` serves it all with aiohttp. No gRPC hop: a request goes straight to the Gateway.
See docs/ARCHITECTURE.md, "The HTTP door".
"""
