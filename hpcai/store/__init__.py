"""The run store (SQLite, WAL) and what it remembers per cluster."""
