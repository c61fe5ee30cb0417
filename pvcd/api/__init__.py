"""pvcd.api"""
