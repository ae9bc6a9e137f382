"""Dense rewards derived from vision-language models (progress labels with provenance)."""
