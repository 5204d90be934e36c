"""Encoded image bytes for the tests' self-made records (one helper instead of a copy per file)."""
import io

from PIL import Image


def encode_image(array, image_format="PNG"):
    """PNG (or JPEG) bytes of a uint8 [h, w, 3] image or [h, w] map."""
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=image_format)
    return buffer.getvalue()
