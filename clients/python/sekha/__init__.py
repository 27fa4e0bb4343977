"""Sekha client: the generated gRPC stubs of the Router and Embedding services and typed clients over them."""
