"""pvcd.state"""
