"""EG3D in plain PyTorch. Knows nothing of GOAE (imports nothing else from goae)."""
