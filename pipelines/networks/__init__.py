"""The models people bring besides checkpoints: LoRA / LyCORIS files, textual-inversion embeddings, VAEs. No torch."""
