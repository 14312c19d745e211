"""The task-routed model: trunk, expert layers, slimmable decoders, extraction, training."""
