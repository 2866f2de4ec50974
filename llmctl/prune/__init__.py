"""`llmctl prune`: Wanda, SparseGPT, magnitude and structured pruning."""
