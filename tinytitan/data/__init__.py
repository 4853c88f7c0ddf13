"""Data: rows and their tokenization, the data check, schema inference, JSON schemas and grammars, the built-in tasks."""
