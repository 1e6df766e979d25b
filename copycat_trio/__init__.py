"""copycat_trio: Raft replicated state machines on Trio."""
