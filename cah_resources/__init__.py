"""The plain code the pipeline runs, without Dagster: the stages, their contract, roll-ups, compute, demo data."""
