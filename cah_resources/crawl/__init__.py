"""Where the input comes from: Common Crawl's crawls, WAT listings, and their segments."""
