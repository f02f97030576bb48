"""PassengerWatchdog: starts and supervises the helper and logging agents."""
