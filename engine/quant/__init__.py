"""turbospec.engine.quant"""
