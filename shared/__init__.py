"""Code shared by every Cascade service: events, settings, messaging, telemetry, errors and gRPC stubs."""
