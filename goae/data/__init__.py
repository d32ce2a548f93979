"""goae.data"""
