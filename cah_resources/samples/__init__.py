"""Demo and test data: a generated sample crawl, a local image web, and a tiny CLIP model."""
