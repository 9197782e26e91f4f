"""Dataset roll-ups over segments: global dedup index, release parquet, report."""
