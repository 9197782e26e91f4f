"""The partitioned stages: the one stage runner, and each stage declared for it."""
