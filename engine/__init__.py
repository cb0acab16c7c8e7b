"""turbospec.engine"""
