"""goae.nets"""
