"""TF-exact JPEG decoding of a crop window: window.c/window.py on the CPU (libjpeg),
plan.c and device/ for the device."""
