"""The embedded demo model's pieces: a synthetic caption/image dataset (and, later, the model itself)."""
