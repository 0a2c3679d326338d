"""citrus_v.data."""
