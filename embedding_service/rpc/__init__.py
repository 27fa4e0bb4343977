"""gRPC adapter of the Embedding service: servicer and protobuf conversion."""
