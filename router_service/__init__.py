"""Router service: one gRPC door to many LLM providers."""
