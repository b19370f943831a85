"""The six Cascade services, one package each."""
