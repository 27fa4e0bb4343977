"""Embedding service: multi-dimension document embeddings in Chroma."""
