"""Image bytes in and out: decoding and checking uploads, encoding results with their metadata, masks and compositing."""
