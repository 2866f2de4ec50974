"""Process-wide runtime settings: quiet libraries, lean imports, thread counts."""
