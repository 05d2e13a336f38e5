"""Data: the one metadata schema, source adapters, the procedural generator, Dataset and splits."""
