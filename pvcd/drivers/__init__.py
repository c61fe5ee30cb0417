"""pvcd.drivers"""
