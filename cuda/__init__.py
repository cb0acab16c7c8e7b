"""turbospec.cuda"""
