"""Stage 1, candidates: WAT files of a segment to deduplicated, language-labelled image/alt-text pairs."""
