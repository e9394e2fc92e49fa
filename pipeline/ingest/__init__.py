"""Stage raw -> events/: the format readers, validation, quarantine and the ingest itself."""
