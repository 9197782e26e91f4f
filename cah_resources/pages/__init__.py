"""The WARC pass: HTML pages read once, parsed once, into image candidates and page text."""
