"""Transports: thin KServe V2 adapters (HTTP, gRPC) over the Engine, plus metrics."""
