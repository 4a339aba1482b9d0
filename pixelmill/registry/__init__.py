"""The models directory: names to files strictly inside their folders, listings, LoRA header checks."""
