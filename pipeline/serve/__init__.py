"""What analysts get: scoring into scores/, queries, output formats and the HTML report."""
