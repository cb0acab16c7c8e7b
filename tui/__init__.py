"""turbospec.tui"""
