"""What a .beton's sidecar says (betons.py) and the generated ImageNet-like photos (photos.py)."""
