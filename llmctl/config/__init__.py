"""Configuration: the schema engine (fields, rules, `--set` parsing) and profile loading."""
