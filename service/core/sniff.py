"""What an encoded crop claims to be, read from its first bytes before any decoder sees it.

Only the documented formats pass - PNG, JPEG (baseline, extended, progressive), BMP, TIFF (classic, with a
known compression), WebP (still) - recognised by their magic bytes and read by these small parsers, never by a
general image library: GIF, JPEG 2000, AVIF, PNM, MPO, BigTIFF, animated WebP and the rest are refused before
their bytes reach OpenJPEG, libavif or any other parser. Each parser returns the declared size and what the
decoder would have to allocate for it, so a crop that declares more than `MAX_DECODE_BYTES` (a TIFF whose one
tile is far larger than the image it declares, say) is refused without being decompressed.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

#: most bytes one crop's decoder may allocate for its pixels: 512 x 512, 4 samples of 16 bits = 2 MiB
MAX_DECODE_BYTES = 512 * 512 * 4 * 2
#: most scans a progressive JPEG may have (encoders use ~10; each scan is a pass over the whole image)
MAX_JPEG_SCANS = 64
#: TIFF compressions decoded: none, CCITT fax (scans), LZW, JPEG, deflate, PackBits
TIFF_COMPRESSIONS = frozenset({1, 2, 3, 4, 5, 7, 8, 32773, 32946})


class HeaderError(ValueError):
    """`reason` is one of CropError's reasons (undecodable, bad_size, bad_depth, bad_channels)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class Header:
    format: str  # png, jpeg, bmp, tiff, webp
    width: int
    height: int
    simple: bool  # a format and layout whose decoding cost is bounded by its size alone (no scans, tiles)


def _u16(data: bytes, pos: int, order: str = ">") -> int:
    return int(struct.unpack_from(order + "H", data, pos)[0])


def _u32(data: bytes, pos: int, order: str = ">") -> int:
    return int(struct.unpack_from(order + "I", data, pos)[0])


def _png(data: bytes) -> Header:
    if len(data) < 24 or data[12:16] != b"IHDR":
        raise HeaderError("undecodable", "PNG header is truncated or has no IHDR chunk")
    return Header("png", _u32(data, 16), _u32(data, 20), True)


_JPEG_SOF = {0xC0: False, 0xC1: False, 0xC2: True}  # marker -> progressive; lossless/hierarchical/arithmetic refused


def _jpeg(data: bytes) -> Header:
    pos, n = 2, len(data)
    while pos + 4 <= n:
        if data[pos] != 0xFF:
            raise HeaderError("undecodable", "JPEG header is corrupt (no marker where one must be)")
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        size = _u16(data, pos + 2)
        if marker in _JPEG_SOF:
            if pos + 10 > n:
                break
            height, width, components = _u16(data, pos + 5), _u16(data, pos + 7), data[pos + 9]
            if components not in (1, 3):
                raise HeaderError("bad_channels", f"JPEG has {components} components; send grayscale or RGB")
            progressive = _JPEG_SOF[marker]
            if progressive and data.count(b"\xff\xda") > MAX_JPEG_SCANS:
                raise HeaderError("undecodable", f"progressive JPEG has more than {MAX_JPEG_SCANS} scans")
            return Header("jpeg", width, height, not progressive)
        if 0xC3 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            raise HeaderError("undecodable", "JPEG variant not accepted: use baseline or progressive JPEG")
        if marker == 0xE2 and data[pos + 4 : pos + 8] == b"MPF\x00":
            raise HeaderError("undecodable", "multi-picture JPEG (MPO) is not accepted: send one JPEG image")
        if marker == 0xDA:
            break
        pos += 2 + size
    raise HeaderError("undecodable", "JPEG header is truncated or has no frame header")


def _bmp(data: bytes) -> Header:
    if len(data) < 26:
        raise HeaderError("undecodable", "BMP header is truncated")
    dib = _u32(data, 14, "<")
    if dib == 12:
        width, height, bpp = _u16(data, 18, "<"), _u16(data, 20, "<"), _u16(data, 24, "<")
    elif dib >= 40 and len(data) >= 34:
        width, height = struct.unpack_from("<ii", data, 18)
        height, bpp = abs(height), _u16(data, 28, "<")
    else:
        raise HeaderError("undecodable", "BMP header is truncated or of an unknown kind")
    if bpp not in (1, 4, 8, 16, 24, 32):
        raise HeaderError("bad_depth", f"BMP has {bpp} bits per pixel")
    return Header("bmp", width, height, True)


def _tiff(data: bytes) -> Header:
    order = "<" if data[:2] == b"II" else ">"
    if len(data) < 8:
        raise HeaderError("undecodable", "TIFF header is truncated")
    ifd = _u32(data, 4, order)
    if ifd + 2 > len(data):
        raise HeaderError("undecodable", "TIFF header is truncated (directory)")
    tags: dict[int, int] = {}
    for i in range(min(_u16(data, ifd, order), 512)):
        pos = ifd + 2 + 12 * i
        if pos + 12 > len(data):
            raise HeaderError("undecodable", "TIFF directory is truncated")
        tag, kind, count = struct.unpack_from(order + "HHI", data, pos)
        if kind == 3:  # SHORT: the first value sits in the entry when count <= 2
            value = _u16(data, pos + 8, order) if count <= 2 else -1
        elif kind == 4:  # LONG
            value = _u32(data, pos + 8, order) if count == 1 else -1
        else:
            value = -1
        if tag == 258 and count > 2:  # BitsPerSample per sample, stored elsewhere: the first one speaks for all
            off = _u32(data, pos + 8, order)
            value = _u16(data, off, order) if off + 2 <= len(data) else -1
        tags[tag] = value
    width, height = tags.get(256, -1), tags.get(257, -1)
    if width < 0 or height < 0:
        raise HeaderError("undecodable", "TIFF does not declare its width and height")
    bits, samples, compression = tags.get(258, 1), tags.get(277, 1), tags.get(259, 1)
    if compression not in TIFF_COMPRESSIONS:
        raise HeaderError("undecodable", f"TIFF compression {compression} is not accepted")
    if not 1 <= samples <= 4:
        raise HeaderError("bad_channels", f"TIFF has {samples} samples per pixel; send grayscale or RGB")
    if bits not in (1, 2, 4, 8, 16):
        raise HeaderError("bad_depth", f"TIFF has {bits} bits per sample")
    tile_w, tile_h = tags.get(322), tags.get(323)
    if tile_w is not None or tile_h is not None:
        tw, th = tile_w or 0, tile_h or 0
        # tiles are multiples of 16 and may overhang the image: libtiff's default 256 x 256 on a small crop is
        # fine (256 KiB a sample); beyond that, never larger than the image rounded up to 16
        if not 0 < tw <= max(256, -(-width // 16) * 16) or not 0 < th <= max(256, -(-height // 16) * 16):
            raise HeaderError("bad_size", f"TIFF tile {tw}x{th} is larger than the {width}x{height} image")
    pixel_bytes = max(1, bits * samples // 8)
    if width * height * pixel_bytes > MAX_DECODE_BYTES:
        raise HeaderError("bad_size", f"TIFF {width}x{height} with {samples}x{bits}-bit samples is too large")
    return Header("tiff", width, height, False)


def _webp(data: bytes) -> Header:
    if len(data) < 30:
        raise HeaderError("undecodable", "WebP header is truncated")
    chunk = data[12:16]
    if chunk == b"VP8 " and data[23:26] == b"\x9d\x01\x2a":
        return Header("webp", _u16(data, 26, "<") & 0x3FFF, _u16(data, 28, "<") & 0x3FFF, False)
    if chunk == b"VP8L" and data[20] == 0x2F:
        bits = _u32(data, 21, "<")
        return Header("webp", (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1, False)
    if chunk == b"VP8X":
        if data[20] & 0x02:
            raise HeaderError("undecodable", "animated WebP is not accepted: send one still image")
        width = int.from_bytes(data[24:27], "little") + 1
        height = int.from_bytes(data[27:30], "little") + 1
        return Header("webp", width, height, False)
    raise HeaderError("undecodable", "WebP header is corrupt or of an unknown kind")


def sniff(data: bytes) -> Header:
    """The crop's format and declared size from its header; HeaderError for anything not on the list."""
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return _png(data)
    if data[:3] == b"\xff\xd8\xff":
        return _jpeg(data)
    if data[:2] == b"BM":
        return _bmp(data)
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return _tiff(data)
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return _webp(data)
    other = next((name for magic, name in _OTHERS if data.startswith(magic)), None)
    what = f"{other} is not accepted" if other else "the first bytes say otherwise"
    raise HeaderError("undecodable", f"not a decodable PNG, JPEG, BMP, TIFF or WebP image ({what})")


#: formats a client may plausibly send, named in the refusal (they are refused all the same)
_OTHERS = (
    (b"GIF8", "GIF"), (b"\x00\x00\x00\x0cjP  ", "JPEG 2000"), (b"\xff\x4f\xff\x51", "JPEG 2000"),
    (b"II+\x00", "BigTIFF"), (b"MM\x00+", "BigTIFF"), (b"\x00\x00\x01\x00", "ICO"),
    (b"\x00\x00\x00\x1cftypavif", "AVIF"), (b"\x00\x00\x00\x20ftypavif", "AVIF"), (b"\x76\x2f\x31\x01", "OpenEXR"),
    (b"P1", "PNM"), (b"P2", "PNM"), (b"P3", "PNM"), (b"P4", "PNM"), (b"P5", "PNM"), (b"P6", "PNM"), (b"P7", "PAM"),
)  # fmt: skip
