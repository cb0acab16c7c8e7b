"""turbospec.engine.spec"""
