"""turbospec.engine.kv"""
