"""citrus_v.data.sources."""
