"""ingest: validated, cleaned, content-addressed dataset versions from gRPC uploads and Kafka records."""
