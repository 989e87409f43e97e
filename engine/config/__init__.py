"""The configuration: its schema (dataclasses) and loading, overrides and checks."""
