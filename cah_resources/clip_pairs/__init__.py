"""Stage 3, clip_pairs: image shards scored by CLIP, pairs kept by similarity, tagged NSFW/watermark."""
