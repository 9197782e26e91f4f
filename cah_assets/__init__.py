"""Dagster definitions of the Crawling@Home pipeline."""
