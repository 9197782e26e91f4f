"""page_scores: a Hugging Face sequence classifier scoring page text, kept at a threshold."""
