"""State shared between requests, behind one `Store` protocol."""
