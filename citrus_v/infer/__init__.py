"""citrus_v.infer."""
