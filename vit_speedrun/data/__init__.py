"""What a .beton's sidecar says (betons.py), which files are images and their pixels
(images.py), and the generated ImageNet-like photos (photos.py)."""
