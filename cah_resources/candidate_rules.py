"""The candidates stage's filters as a Dagster resource, so a run can change them from the launchpad."""

import dagster as dg

from cah_resources.image_links import CandidateFilters
from cah_resources.wat import MAX_RECORD_BYTES


class CandidateRules(dg.ConfigurableResource):
    """Crawling@Home's link filters; see README "candidates" for what each drop reason means."""

    min_alt_length: int = 5
    max_alt_length: int = 2000
    long_alt: str = "truncate"
    drop_extensions: list[str] = [".svg", ".gif"]
    max_domain_length: int = 60
    # A WAT record larger than this is counted as malformed_too_large and skipped, unread.
    max_record_bytes: int = MAX_RECORD_BYTES
    # URL hash lists to honour (SHA-256 or MD5 hex, one per line; paths or fsspec URLs): listed
    # URLs are dropped as blocklisted_url and never downloaded.
    blocked_url_lists: list[str] = []

    def filters(self) -> CandidateFilters:
        return CandidateFilters(
            self.min_alt_length,
            self.max_alt_length,
            self.long_alt,
            tuple(e.lower() for e in self.drop_extensions),
            self.max_domain_length,
            tuple(self.blocked_url_lists),
        )
