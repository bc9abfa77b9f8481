"""Inference over an image: sliding windows and class chunking."""
