"""Command-line tools: passenger, passenger-status, passenger-memory-stats, passenger-config."""
