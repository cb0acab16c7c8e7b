"""turbospec.engine.models"""
