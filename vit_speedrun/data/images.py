"""Image files as write_ffcv.py and predict.py read them: which names are images, and their
pixels as the reference decodes them.

One definition for both, so that a photo predict.py reads is one write_ffcv.py would
convert, with the same pixels.
"""
import os

import numpy as np

IMAGE_SUFFIXES = {'.jpg', '.jpeg', '.png', '.bmp', '.ppm', '.pgm', '.tif', '.tiff', '.webp'}
JPEG_SOI = b'\xff\xd8'


def is_image_name(name):
    """True for a file name with an image suffix (any case) that is not hidden."""
    return not name.startswith('.') and os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES


def image_names(folder):
    """(the image files' names in `folder`, sorted; the number of other files in it)."""
    with os.scandir(folder) as entries:   # scandir: no stat per file
        files = sorted(e.name for e in entries if e.is_file())
    images = [f for f in files if is_image_name(f)]
    return images, len(files) - len(images)


def load_rgb(path):
    """uint8 HxWx3 pixels of any image file (the content decides, not the suffix): JPEGs
    as TF decodes them (jpeg_window: libjpeg IFAST; grayscale replicated, CMYK by TF's
    rule), anything else through PIL's RGB conversion."""
    data = np.fromfile(path, np.uint8)
    if data[:2].tobytes() == JPEG_SOI:
        from vit_speedrun.jpeg import window as jpeg_window
        return jpeg_window.decode(data)
    from PIL import Image
    with Image.open(path) as image:
        return np.asarray(image.convert('RGB'))
