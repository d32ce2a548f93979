"""goae.model"""
