"""One module per command holding its profile schema as `SCHEMA` (see llmctl/config/schema.py)."""
