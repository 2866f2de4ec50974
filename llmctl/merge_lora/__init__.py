"""`llmctl merge-lora`: fold a LoRA adapter into its base model."""
