"""Image checks and img2dataset-style resizing: downloaded bytes in, a re-encoded JPEG or a reason out."""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass, replace

from PIL import Image, ImageOps, UnidentifiedImageError

from cah_resources.vocabulary import DownloadStatus

EXIF_ORIENTATION = 0x0112

RESIZE_MODES = ("no", "border", "keep_ratio", "keep_ratio_largest", "center_crop")

# Formats a crawler meets that we recognise only to name them in a rejection: each has magic
# bytes, and opening one reads a header without decoding (EPS would shell out, so it is not here).
RECOGNISED_ONLY = ("GIF", "BMP", "TIFF", "ICO")


@dataclass(frozen=True)
class ResizeSettings:
    """What counts as a usable image and how it is stored (img2dataset's names and defaults)."""

    resize_mode: str = "border"
    """img2dataset's modes: border (long side to image_size, padded white to a square), keep_ratio (short
    side to image_size), keep_ratio_largest (long side to image_size), center_crop (short side, then the
    centre square) or no."""
    image_size: int = 256
    """Pixels of the side resize_mode sets."""
    resize_only_if_bigger: bool = False
    """Resize only images whose side that resize_mode sets is over image_size; smaller ones are kept as they are."""
    encode_quality: int = 95
    """JPEG quality (1-100) of the stored images."""
    allowed_formats: tuple[str, ...] = ("JPEG", "PNG", "WEBP")
    """Image formats kept (Pillow's names); any other ends as format_not_allowed."""
    min_bytes: int = 5000
    """A body under this many bytes ends as too_small, before decoding (placeholders, tracking pixels)."""
    min_side: int = 0
    """An image with a side under this many pixels ends as image_too_small."""
    max_pixels: int = 89_478_485
    """An image of more pixels ends as too_many_pixels before decoding: Pillow's decompression-bomb threshold."""
    max_aspect_ratio: float = 10.0
    """An image more elongated than this (long side / short side) ends as aspect_ratio_too_large; 0: no limit."""
    max_scan_pixels: int = 2_000_000_000
    """A JPEG decodes each of its scans over the whole image, and nothing bounds how many scans a file
    holds: 5,000 repeated ones fit in 150 KB and take 38 s at 8000x8000. Real progressive JPEGs have
    about 10, so scans x pixels past this bound is refused before decoding. 0: no limit."""
    max_decode_cpu_seconds: float = 10.0
    """CPU seconds one image may take in an image worker process, whatever the cause; past it the worker
    is replaced and the image gets decode_timeout. Threads (a daemonic host) cannot be stopped, so there
    only the checks before decoding apply. 0: no limit."""
    max_decode_bytes: int = 1024 * 1024 * 1024
    """Memory one image may take while it is decoded and converted, estimated from its size after JPEG
    draft scaling, its mode and bit depth: a 9400x9400 16-bit greyscale PNG is under max_pixels but
    needs ~1.2 GB; the largest RGB image under max_pixels needs ~0.6 GB. 0: no limit."""

    def __post_init__(self) -> None:
        if self.resize_mode not in RESIZE_MODES:
            raise ValueError(f"resize_mode must be one of {RESIZE_MODES}, not {self.resize_mode!r}")
        if self.image_size < 1:
            raise ValueError(f"image_size must be a positive number of pixels, not {self.image_size}")
        if self.max_scan_pixels < 0 or self.max_decode_cpu_seconds < 0 or self.max_decode_bytes < 0:
            raise ValueError(
                "max_scan_pixels, max_decode_cpu_seconds and max_decode_bytes must be 0 (no limit) or positive"
            )
        if not 1 <= self.encode_quality <= 100:
            raise ValueError(f"encode_quality must be within 1..100, not {self.encode_quality}")
        names = tuple("JPEG" if f.upper() == "JPG" else f.upper() for f in self.allowed_formats)
        object.__setattr__(self, "allowed_formats", names)


@dataclass(frozen=True)
class ImageOutcome:
    """The result of checking one downloaded body: ``jpeg`` is set exactly when status is 'ok'."""

    status: str
    error_message: str | None = None
    jpeg: bytes | None = None
    bytes: int | None = None
    sha256: str | None = None
    width: int | None = None
    height: int | None = None
    original_width: int | None = None
    original_height: int | None = None
    warnings: int = 0  # warnings Pillow raised on this image (e.g. bogus EXIF tags), counted, not printed


def check_body_size(body: bytes, settings: ResizeSettings) -> ImageOutcome | None:
    """The cheap check done before a body is shipped to a worker process."""
    if len(body) < settings.min_bytes:
        return ImageOutcome(DownloadStatus.TOO_SMALL, f"{len(body)} bytes, fewer than the minimum {settings.min_bytes}")
    return None


def sniff_format(body: bytes) -> str | None:
    """The allowed-by-default format that ``body``'s magic bytes claim, if any."""
    if body.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if body.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if body[:4] == b"RIFF" and body[8:12] == b"WEBP":
        return "WEBP"
    return None


def _open(body: bytes, settings: ResizeSettings) -> Image.Image | ImageOutcome:
    try:
        return Image.open(io.BytesIO(body), formats=settings.allowed_formats)
    except Image.DecompressionBombError as exc:
        return ImageOutcome(DownloadStatus.TOO_MANY_PIXELS, str(exc).split(".")[0])
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        pass
    try:
        refused = tuple(f for f in ("JPEG", "PNG", "WEBP", *RECOGNISED_ONLY) if f not in settings.allowed_formats)
        other = Image.open(io.BytesIO(body), formats=refused).format
    except Exception:
        other = "SVG" if b"<svg" in body[:4096].lower() else None
    if other is not None:
        return ImageOutcome(
            DownloadStatus.FORMAT_NOT_ALLOWED, f"{other} is not one of {', '.join(settings.allowed_formats)}"
        )
    claimed = sniff_format(body)
    if claimed is not None:
        return ImageOutcome(DownloadStatus.CORRUPT_IMAGE, f"starts like {claimed} but its header cannot be read")
    return ImageOutcome(DownloadStatus.NOT_AN_IMAGE, "bytes are not a recognisable image")


def _shape_refusal(width: int, height: int, settings: ResizeSettings) -> ImageOutcome | None:
    if width * height > settings.max_pixels:
        return ImageOutcome(
            DownloadStatus.TOO_MANY_PIXELS,
            f"{width}x{height} exceeds {settings.max_pixels} pixels (decompression bomb guard)",
        )
    if min(width, height) < max(settings.min_side, 1):
        return ImageOutcome(
            DownloadStatus.IMAGE_TOO_SMALL, f"{width}x{height} has a side under {settings.min_side} pixels"
        )
    if settings.max_aspect_ratio and max(width, height) / min(width, height) > settings.max_aspect_ratio:
        return ImageOutcome(
            DownloadStatus.ASPECT_RATIO_TOO_LARGE,
            f"{width}x{height} is more elongated than {settings.max_aspect_ratio}:1",
        )
    return None


def _scan_refusal(body: bytes, img: Image.Image, settings: ResizeSettings) -> ImageOutcome | None:
    """Refuse a JPEG whose scans would each be decoded over too many pixels.

    Entropy-coded data stuffs every 0xFF with 0x00, so each FF DA is a real start-of-scan marker
    (or one in an embedded thumbnail): counting them is an upper bound, at C speed.
    """
    if img.format != "JPEG" or not settings.max_scan_pixels:
        return None
    # Every FF DA holds a DA byte: counting the single byte (several times faster) bounds the scans
    # from above, and an ordinary photo is cleared by the bound without the exact count.
    if body.count(b"\xda") * img.width * img.height <= settings.max_scan_pixels:
        return None
    scans = body.count(b"\xff\xda")
    if scans * img.width * img.height <= settings.max_scan_pixels:
        return None
    return ImageOutcome(
        DownloadStatus.TOO_COSTLY,
        f"{scans} scans of {img.width}x{img.height} exceed {settings.max_scan_pixels} scan-pixels",
    )


# Bytes per pixel of the decoded image, by mode (16- and 32-bit modes: with the two 32-bit images
# _to_rgb_or_rgba makes to rescale them), and 4 more for the RGB or RGBA image made of it.
_MODE_BYTES = {"1": 1, "L": 1, "P": 1, "LA": 2, "PA": 2, "La": 2, "RGB": 3, "YCbCr": 3, "LAB": 3, "HSV": 3}
_WIDE_MODES = ("I", "F", "I;16", "I;16B", "I;16L", "I;16N")


def decode_bytes(width: int, height: int, mode: str) -> int:
    """An upper estimate of the memory that decoding and converting one image of this mode takes."""
    per_pixel = _MODE_BYTES.get(mode, 4)
    if mode in _WIDE_MODES:
        per_pixel = (2 if mode.startswith("I;16") else 4) + 4 + 4
    return width * height * (per_pixel + 4)


def _memory_refusal(img: Image.Image, settings: ResizeSettings) -> ImageOutcome | None:
    if not settings.max_decode_bytes:
        return None
    need = decode_bytes(img.width, img.height, img.mode)
    if need <= settings.max_decode_bytes:
        return None
    return ImageOutcome(
        DownloadStatus.TOO_COSTLY,
        f"{img.width}x{img.height} {img.mode} needs ~{need // 2**20} MiB to decode, "
        f"over the {settings.max_decode_bytes // 2**20} MiB limit",
    )


# Huffman-coded JPEG frames (baseline, extended, progressive): every 8x8 luma block's DC costs at
# least one bit, so a file with fewer bits than blocks cannot hold its image; libjpeg would fill
# the rest with grey and report success. Arithmetic-coded frames (SOF9+) can go below one bit.
_HUFFMAN_FRAMES = (0xC0, 0xC1, 0xC2)
_ARITHMETIC_FRAMES = (0xC9, 0xCA, 0xCD, 0xCE)
# Start-of-frame markers: C0-CF but DHT (C4), JPG (C8) and DAC (CC).
_FRAME_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
# Marker segments walked before giving up on finding the first scan (a real header has about ten).
_MAX_HEADER_SEGMENTS = 1000


def _frame_markers(body: bytes) -> list[int] | None:
    """The start-of-frame markers of a JPEG's header (its segments up to the first scan), or None
    when the header cannot be walked. Pillow has parsed the same segments to open the image."""
    at, end = 2, len(body)
    found: list[int] = []
    for _segment in range(_MAX_HEADER_SEGMENTS):
        if at + 4 > end or body[at] != 0xFF:
            return None
        marker = body[at + 1]
        if marker == 0xFF:  # a fill byte before a marker
            at += 1
            continue
        if marker == 0xDA:  # start of scan: the header is over
            return found
        if marker in _FRAME_MARKERS:
            found.append(marker)
        at += 2 + ((body[at + 2] << 8) | body[at + 3])
    return None


def _missing_data_refusal(body: bytes, img: Image.Image) -> ImageOutcome | None:
    if img.format != "JPEG":
        return None
    frames = _frame_markers(body)
    if frames is None:  # the frame type is unknown: looked for anywhere in the file (slower)
        frames = [m for m in (*_HUFFMAN_FRAMES, *_ARITHMETIC_FRAMES) if bytes((0xFF, m)) in body]
    if any(marker in _ARITHMETIC_FRAMES for marker in frames) or not any(m in _HUFFMAN_FRAMES for m in frames):
        return None
    blocks = -(-img.width // 8) * -(-img.height // 8)
    if len(body) * 8 >= blocks:
        return None
    return ImageOutcome(
        DownloadStatus.CORRUPT_IMAGE,
        f"truncated: a {img.width}x{img.height} JPEG needs at least {blocks // 8} bytes of scan data, "
        f"the file has {len(body)}",
    )


def _needs_resize(width: int, height: int, settings: ResizeSettings) -> bool:
    if settings.resize_mode == "no":
        return False
    if settings.resize_only_if_bigger:
        side = min(width, height) if settings.resize_mode in ("keep_ratio", "center_crop") else max(width, height)
        return side > settings.image_size
    return True


def _target_size(width: int, height: int, settings: ResizeSettings) -> tuple[int, int]:
    """The stored size before any crop or border: the short side (or the long one) becomes image_size."""
    short_side_fits = settings.resize_mode in ("keep_ratio", "center_crop")
    side = min(width, height) if short_side_fits else max(width, height)
    factor = settings.image_size / side
    return (
        settings.image_size if side == width else max(1, round(width * factor)),
        settings.image_size if side == height else max(1, round(height * factor)),
    )


def _reduced_size(width: int, height: int, factor: int) -> tuple[int, int]:
    """The size of an image shrunk by an integer factor, by Pillow's reduce or libjpeg's DCT scaling (ceil)."""
    return -(-width // factor), -(-height // factor)


def _draft_request(width: int, height: int, target: tuple[int, int]) -> tuple[int, int] | None:
    """The size to ask JPEG draft for, so that libjpeg decodes at the smallest DCT scale (1/8, 1/4,
    1/2) whose output still covers ``target``. Pillow picks the scale from ``width // requested``,
    so asking for the target itself loses a step whenever rounding made it a pixel larger than an
    exact fraction (1024x683 to 256x171 was decoded at 512x342, not 256x171)."""
    for factor in (8, 4, 2):
        covers = all(side >= want for side, want in zip(_reduced_size(width, height, factor), target, strict=True))
        if covers and width >= factor and height >= factor:
            return width // factor, height // factor
    return None


def _to_rgb_or_rgba(img: Image.Image) -> Image.Image:
    """RGB, or RGBA when the image has transparency (matted only after resizing, where it is cheap)."""
    if img.mode in ("RGB", "RGBA"):
        return img
    if "A" in img.getbands() or (img.mode == "P" and "transparency" in img.info):
        return img.convert("RGBA")
    if img.mode.startswith("I;16"):
        # 16-bit greyscale PNGs: keep the high byte rather than clipping everything to white.
        img = img.convert("I").point(lambda v: v * (1 / 256)).convert("L")
    return img.convert("RGB")


def _matte_on_white(img: Image.Image) -> Image.Image:
    """Transparency flattened onto white, as img2dataset does."""
    if img.mode != "RGBA":
        return img
    background = Image.new("RGB", img.size, (255, 255, 255))
    background.paste(img, mask=img.getchannel("A"))
    return background


def _resize(img: Image.Image, settings: ResizeSettings) -> Image.Image:
    size = settings.image_size
    target = _target_size(img.width, img.height, settings)
    if target != img.size:
        # img2dataset's defaults: area averaging to shrink (Pillow's BOX is OpenCV's INTER_AREA),
        # Lanczos to enlarge.
        shrinking = target[0] < img.width
        factor = img.width // target[0]
        if shrinking and factor >= 2 and _reduced_size(img.width, img.height, factor) == target:
            # An exact integer shrink: reduce averages k x k blocks as BOX does, in a third of its time.
            img = img.reduce(factor)
        else:
            img = img.resize(target, Image.Resampling.BOX if shrinking else Image.Resampling.LANCZOS)
    if settings.resize_mode == "center_crop":
        left, top = (img.width - size) // 2, (img.height - size) // 2
        img = img.crop((left, top, left + size, top + size))
    elif settings.resize_mode == "border" and img.size != (size, size):
        canvas = Image.new("RGB", (size, size), (255, 255, 255))
        canvas.paste(img, ((size - img.width) // 2, (size - img.height) // 2), mask=img if img.mode == "RGBA" else None)
        img = canvas
    return img


def process_image(body: bytes, settings: ResizeSettings) -> ImageOutcome:
    """Check, orient, flatten, resize and re-encode one image; never raises."""
    early = check_body_size(body, settings)
    if early is not None:
        return early
    # Hostile metadata makes Pillow warn once per bad EXIF tag (thousands of stderr lines per
    # image): warnings are counted into the outcome instead of printed.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        outcome = _process(body, settings)
    return replace(outcome, warnings=len(caught)) if caught else outcome


def _process(body: bytes, settings: ResizeSettings) -> ImageOutcome:
    size, sha256 = len(body), hashlib.sha256(body).hexdigest()
    opened = _open(body, settings)
    if isinstance(opened, ImageOutcome):
        return opened
    try:
        with opened as img:
            raw_w, raw_h = img.size
            refusal = (
                _shape_refusal(raw_w, raw_h, settings)
                or _scan_refusal(body, img, settings)
                or _missing_data_refusal(body, img)
            )
            if refusal is not None:
                return refusal
            resize = _needs_resize(raw_w, raw_h, settings)
            if resize and img.format == "JPEG":
                # libjpeg decodes at 1/2, 1/4 or 1/8 scale for free when the target is small
                # enough; draft never goes below the requested size, so quality is kept.
                request = _draft_request(raw_w, raw_h, _target_size(raw_w, raw_h, settings))
                if request is not None:
                    img.draft(None, request)
            refusal = _memory_refusal(img, settings)  # after draft: the size and mode that are decoded
            if refusal is not None:
                return refusal
            img.load()
            orientation = img.getexif().get(EXIF_ORIENTATION)
            quarter_turn = orientation in (5, 6, 7, 8)
            orig_w, orig_h = (raw_h, raw_w) if quarter_turn else (raw_w, raw_h)
            # exif_transpose copies even an upright image; only a turned or mirrored one needs it.
            upright = ImageOps.exif_transpose(img) if orientation in (2, 3, 4, 5, 6, 7, 8) else img
            # Pillow resamples RGBA with premultiplied alpha, so matting after the resize is exact.
            out = _to_rgb_or_rgba(upright)
            if resize:
                out = _resize(out, settings)
            out = _matte_on_white(out)
            buffer = io.BytesIO()
            out.save(buffer, "JPEG", quality=settings.encode_quality)
    except Image.DecompressionBombError as exc:
        return ImageOutcome(DownloadStatus.TOO_MANY_PIXELS, str(exc).split(".")[0])
    except Exception as exc:  # any decoder failure on hostile bytes is this image's problem only
        message = " ".join(str(exc).split()) or type(exc).__name__
        return ImageOutcome(DownloadStatus.CORRUPT_IMAGE, f"cannot decode: {message}"[:300])
    return ImageOutcome(
        DownloadStatus.OK,
        jpeg=buffer.getvalue(),
        width=out.width,
        height=out.height,
        original_width=orig_w,
        original_height=orig_h,
        bytes=size,
        sha256=sha256,
    )
