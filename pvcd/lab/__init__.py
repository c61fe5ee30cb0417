"""pvcd.lab"""
