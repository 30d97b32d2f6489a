"""rcic."""
