"""Profiles: batch corrections, hand-crafted features (image statistics, CellProfiler),
heads on features and embeddings, consensus profiles and their metrics."""
