"""citrus_v.train."""
