"""goae.train"""
