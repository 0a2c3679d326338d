"""citrus_v.model."""
