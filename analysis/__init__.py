"""turbospec.analysis"""
