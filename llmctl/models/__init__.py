"""Models: the registry, name resolution, loading, import, doctor, the default model and the formats table."""
