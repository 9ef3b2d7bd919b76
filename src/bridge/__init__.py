"""The bridge: every node's status from the broker into YL-monitor, at least once."""
