"""Data: the records reader, record layouts, token shards, curation, SFT and preference data."""
