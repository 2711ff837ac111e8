"""big_vision's ViT."""
