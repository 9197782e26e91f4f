"""The Dagster assets of the three partitioned stages."""
