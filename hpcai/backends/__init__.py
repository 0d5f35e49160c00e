"""Where jobs go: the session, the schedulers, the transports, staging."""
