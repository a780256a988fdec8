"""slimbench.compress."""
