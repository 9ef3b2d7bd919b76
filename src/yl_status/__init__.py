"""yl-status command line and development tooling."""
