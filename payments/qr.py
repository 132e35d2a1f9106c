"""QR images of Native-pay code_urls, rendered once per code_url and cached in memory.

A code_url never changes for an attempt, so its PNG is immutable: an LRU cache per process is enough
(the staff chat sends the same bytes the pay page shows)."""

from __future__ import annotations

import io
from functools import lru_cache

import qrcode
from qrcode.constants import ERROR_CORRECT_M


@lru_cache(maxsize=512)
def qr_png(code_url: str) -> bytes:
    image = qrcode.QRCode(error_correction=ERROR_CORRECT_M, box_size=8, border=2)
    image.add_data(code_url)
    image.make(fit=True)
    buffer = io.BytesIO()
    image.make_image(fill_color="black", back_color="white").save(buffer, format="PNG")
    return buffer.getvalue()
