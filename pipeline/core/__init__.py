"""The base layer: settings, errors, table schemas and lake I/O. Imports nothing else of clickstream."""
