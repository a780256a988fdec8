"""slimbench.bench."""
