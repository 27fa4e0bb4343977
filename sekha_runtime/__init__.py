"""The server runtime both Sekha services share.

Domain errors, configuration loading, telemetry and the gRPC server frame (interceptors, auth,
TLS, lifecycle, reload). The services depend on it; the client distribution never does. See
docs/ARCHITECTURE.md for what lives where.
"""
