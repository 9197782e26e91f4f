"""Stage 2, image_shards: candidates downloaded, checked, resized and written as webdataset shards."""
