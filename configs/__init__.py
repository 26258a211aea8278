"""The configurations metarec ships: YAML files read as package data (``metarec:NAME`` on the command line)."""
