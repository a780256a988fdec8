"""slimbench.reports."""
