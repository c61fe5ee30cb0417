"""pvcd.cli"""
