"""validator: quality gates for each candidate against the current champion, on the same fresh data."""
