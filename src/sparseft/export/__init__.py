"""Export: model artifacts (save_pretrained folders plus the configs that produced them)."""
