"""`make bench`: vpiska against two minimal peers speaking the same room protocol.

Run with `python -m bench.run` from the repository root (the Makefile does); see README.md.
"""
