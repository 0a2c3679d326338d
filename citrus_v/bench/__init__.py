"""citrus_v.bench."""
