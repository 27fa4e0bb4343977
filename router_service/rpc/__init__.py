"""gRPC adapter of the Router service: servicer and protobuf conversion."""
