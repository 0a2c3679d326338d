"""citrus_v.volume."""
