"""Measurement: timing and statistics, scenarios, memory, environment, cell isolation and the
measuring cells themselves."""
