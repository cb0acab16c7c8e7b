"""turbospec.engine.data"""
