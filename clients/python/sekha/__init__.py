"""Sekha: client and shared runtime of the Sekha gRPC LLM gateway."""
