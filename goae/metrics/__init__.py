"""goae.metrics"""
