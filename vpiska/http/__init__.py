"""The wire: parse and validate a request, make one call below, format the envelope."""
