"""PassengerHelperAgent: HTTP front end, application pool, spawner, admin API."""
