"""Inference: predictions with test-time augmentation, embeddings, logits files and the
model's temperature."""
