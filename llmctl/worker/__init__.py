"""The opt-in warm worker behind `llmctl worker`: one process with torch and transformers imported that forks
each later command, so a short command costs its work instead of seconds of imports.
"""
