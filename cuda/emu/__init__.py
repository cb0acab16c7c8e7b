"""turbospec.cuda.emu"""
