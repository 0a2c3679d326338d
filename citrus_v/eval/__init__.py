"""citrus_v.eval."""
