"""PassengerLoggingAgent: the one writer of log files."""
