"""llmctl's command-line layer: one module per command, composed in main.py."""
