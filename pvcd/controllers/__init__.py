"""pvcd.controllers"""
