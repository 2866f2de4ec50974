"""Built-in profiles: profiles/<command>/<name>.yaml (shipped inside the package as llmctl.builtin_profiles)."""
