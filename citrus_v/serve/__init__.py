"""citrus_v.serve."""
