"""registry: model versions, aliases, artifacts, lineage and the audit trail of every alias move."""
