"""Image checks and img2dataset's resize modes, on real images made with Pillow."""

import io
import random
import struct

import numpy as np
import pytest
from PIL import Image

from cah_resources.image_shards import resizer
from cah_resources.image_shards.resizer import ResizeSettings, decode_bytes, process_image
from cah_resources.samples.local_web import decompression_bomb_png, photo_like
from tests.hostile_images import (
    jpeg_claiming_a_larger_frame,
    jpeg_with_bogus_exif_tags,
    progressive_jpeg_with_repeated_scans,
    sixteen_bit_png,
)


def encode(img: Image.Image, fmt: str = "JPEG", **params) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, fmt, **params)
    return buffer.getvalue()


def decode(jpeg: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(jpeg))
    assert img.format == "JPEG"
    return img.convert("RGB")


LANDSCAPE = encode(photo_like(400, 300, seed=1, grain=12), quality=92)


@pytest.mark.parametrize(
    "mode,size",
    [
        ("no", (400, 300)),
        ("border", (256, 256)),
        ("keep_ratio", (341, 256)),
        ("keep_ratio_largest", (256, 192)),
        ("center_crop", (256, 256)),
    ],
)
def test_each_resize_mode_gives_img2datasets_geometry(mode, size):
    out = process_image(LANDSCAPE, ResizeSettings(resize_mode=mode, image_size=256))
    assert out.status == "ok", out.error_message
    assert (out.width, out.height) == size == decode(out.jpeg).size
    assert (out.original_width, out.original_height) == (400, 300)
    assert out.bytes == len(LANDSCAPE)


def test_border_mode_pads_with_white_above_and_below_a_landscape_image():
    out = decode(process_image(LANDSCAPE, ResizeSettings(resize_mode="border", image_size=256)).jpeg)
    pixels = np.asarray(out, dtype=np.int32)
    assert pixels[:20].min() > 240 and pixels[-20:].min() > 240  # 256x192 picture, 32 px bars
    assert pixels[100:150].std() > 5


def test_resize_only_if_bigger_keeps_small_images_as_they_are():
    small = encode(photo_like(200, 150, seed=2, grain=20), quality=95)
    out = process_image(small, ResizeSettings(resize_mode="border", image_size=256, resize_only_if_bigger=True))
    assert (out.width, out.height) == (200, 150)
    shrunk = process_image(LANDSCAPE, ResizeSettings(resize_mode="border", image_size=256, resize_only_if_bigger=True))
    assert (shrunk.width, shrunk.height) == (256, 256)


def test_large_jpegs_decoded_at_reduced_scale_still_get_the_exact_target_size():
    big = encode(photo_like(2000, 1500, seed=3), quality=85)
    for mode, size in [("keep_ratio", (341, 256)), ("center_crop", (256, 256)), ("keep_ratio_largest", (256, 192))]:
        out = process_image(big, ResizeSettings(resize_mode=mode, image_size=256))
        assert (out.width, out.height) == size
        assert (out.original_width, out.original_height) == (2000, 1500)


def test_exif_orientation_is_applied_and_reported_in_the_original_size():
    img = Image.new("RGB", (400, 300), (0, 0, 255))
    img.paste((255, 0, 0), (0, 0, 200, 300))  # left half red, right half blue
    noisy = Image.fromarray(
        np.clip(np.asarray(img, np.int16) + np.random.default_rng(0).normal(0, 8, (300, 400, 3)), 0, 255).astype(
            np.uint8
        )
    )
    exif = Image.Exif()
    exif[0x0112] = 6  # the camera was turned: display rotated 90 degrees clockwise
    out = process_image(encode(noisy, exif=exif), ResizeSettings(resize_mode="keep_ratio", image_size=150))
    assert (out.original_width, out.original_height) == (300, 400)
    assert (out.width, out.height) == (150, 200)
    pixels = np.asarray(decode(out.jpeg), dtype=np.int32)
    top, bottom = pixels[:60].mean(axis=(0, 1)), pixels[-60:].mean(axis=(0, 1))
    assert top[0] > 180 and top[2] < 80  # the red half is now on top
    assert bottom[2] > 180 and bottom[0] < 80


@pytest.mark.parametrize("mode", ["no", "border", "keep_ratio", "center_crop"])
def test_transparency_is_flattened_onto_white(mode):
    rgba = photo_like(300, 200, seed=4, grain=20).convert("RGBA")
    alpha = Image.new("L", rgba.size, 255)
    alpha.paste(0, (0, 0, 100, 200))  # the left third is transparent
    rgba.putalpha(alpha)
    out = process_image(encode(rgba, "PNG"), ResizeSettings(resize_mode=mode, image_size=150))
    pixels = np.asarray(decode(out.jpeg), dtype=np.int32)
    transparent = round(pixels.shape[1] * 0.9 * 100 / 300) if mode != "center_crop" else 20
    assert pixels[:, :transparent].min() > 240
    assert pixels[:, -pixels.shape[1] // 3 :].std() > 5


def test_palette_and_sixteen_bit_images_become_rgb():
    palette = photo_like(200, 150, seed=5, grain=30).convert("P")
    palette.info["transparency"] = 0
    grey16 = Image.fromarray(np.random.default_rng(1).integers(0, 65535, (150, 200)).astype(np.uint16))
    for body in (encode(palette, "PNG"), encode(grey16, "PNG")):
        out = process_image(body, ResizeSettings(resize_mode="no"))
        assert out.status == "ok", out.error_message
        assert decode(out.jpeg).mode == "RGB"


def test_higher_encode_quality_keeps_more_detail():
    low = process_image(LANDSCAPE, ResizeSettings(encode_quality=40))
    high = process_image(LANDSCAPE, ResizeSettings(encode_quality=95))
    assert len(high.jpeg) > len(low.jpeg) * 1.5


def test_sha256_is_of_the_downloaded_bytes():
    import hashlib

    assert process_image(LANDSCAPE, ResizeSettings()).sha256 == hashlib.sha256(LANDSCAPE).hexdigest()


@pytest.mark.parametrize(
    "body,settings,status",
    [
        (encode(Image.new("RGB", (40, 30), (9, 9, 9))), ResizeSettings(), "too_small"),
        (b"<!doctype html><html>" + b"<p>not an image</p>" * 400, ResizeSettings(), "not_an_image"),
        (encode(photo_like(200, 150, seed=6, grain=30), "GIF"), ResizeSettings(), "format_not_allowed"),
        (encode(photo_like(200, 150, seed=6, grain=30), "BMP"), ResizeSettings(), "format_not_allowed"),
        (LANDSCAPE, ResizeSettings(allowed_formats=("PNG",)), "format_not_allowed"),
        (LANDSCAPE[: len(LANDSCAPE) * 3 // 4], ResizeSettings(), "corrupt_image"),
        (LANDSCAPE[:600] + random.Random(0).randbytes(20_000), ResizeSettings(), "corrupt_image"),
        (encode(photo_like(1200, 60, seed=7, grain=30)), ResizeSettings(max_aspect_ratio=10), "aspect_ratio_too_large"),
        (LANDSCAPE, ResizeSettings(min_side=301), "image_too_small"),
        (LANDSCAPE, ResizeSettings(max_pixels=400 * 300 - 1), "too_many_pixels"),
    ],
    ids=[
        "tiny",
        "html",
        "gif",
        "bmp",
        "jpeg_not_allowed",
        "truncated",
        "garbage_after_header",
        "banner",
        "min_side",
        "max_pixels",
    ],
)
def test_unusable_bodies_get_their_reason(body, settings, status):
    out = process_image(body, settings)
    assert out.status == status
    assert out.error_message and "\n" not in out.error_message
    assert out.jpeg is None


def test_a_decompression_bomb_is_refused_from_its_header_without_decoding():
    bomb = decompression_bomb_png(side=10_000)
    assert len(bomb) > 5000
    # Its pixel data is not valid: had it been decoded, it would be 'corrupt_image'.
    out = process_image(bomb, ResizeSettings())
    assert out.status == "too_many_pixels"
    assert "10000x10000" in out.error_message


def test_hostile_bytes_never_raise():
    rng = random.Random(42)
    headers = [b"\xff\xd8\xff\xe0", b"\x89PNG\r\n\x1a\n", b"RIFF\x00\x10\x00\x00WEBPVP8 ", b"GIF89a", b""]
    for i in range(150):
        body = rng.choice(headers) + rng.randbytes(rng.randrange(5000, 12000))
        if i % 3 == 0:
            body = LANDSCAPE[: rng.randrange(100, len(LANDSCAPE))] + rng.randbytes(6000)
        out = process_image(body, ResizeSettings())
        assert out.status in {"ok", "not_an_image", "corrupt_image", "format_not_allowed", "too_many_pixels"}


@pytest.mark.parametrize("bad", [{"resize_mode": "stretch"}, {"image_size": 0}, {"encode_quality": 101}])
def test_bad_settings_are_one_line_errors(bad):
    with pytest.raises(ValueError) as info:
        ResizeSettings(**bad)
    assert "\n" not in str(info.value)


def test_a_jpeg_whose_scans_repeat_is_refused_as_too_costly_before_decoding():
    hostile = progressive_jpeg_with_repeated_scans(2000, 2000)  # 2,010 scans over 4 Mpx
    out = process_image(hostile, ResizeSettings())
    assert out.status == "too_costly" and out.jpeg is None
    assert out.error_message == "2010 scans of 2000x2000 exceed 2000000000 scan-pixels"


def test_an_ordinary_progressive_jpeg_passes_the_scan_check():
    progressive = encode(photo_like(2000, 1500, seed=4), quality=85, progressive=True)
    assert process_image(progressive, ResizeSettings(image_size=256)).status == "ok"


def test_pillow_warnings_on_bogus_exif_tags_are_counted_into_the_outcome():
    out = process_image(jpeg_with_bogus_exif_tags(5400), ResizeSettings())
    assert out.status == "ok"
    assert out.warnings > 5000


@pytest.mark.parametrize("field", ["max_scan_pixels", "max_decode_cpu_seconds"])
def test_negative_cost_limits_are_refused(field):
    with pytest.raises(ValueError, match="0 \\(no limit\\) or positive"):
        ResizeSettings(**{field: -1})


def test_a_16_bit_png_under_max_pixels_is_refused_by_its_decode_memory():
    big = sixteen_bit_png(9400)
    out = process_image(big, ResizeSettings())
    assert len(big) < 500_000 and ResizeSettings().max_pixels > 9400 * 9400
    assert out.status == "too_costly" and "I;16" in out.error_message and "MiB to decode" in out.error_message
    small = process_image(sixteen_bit_png(2000), ResizeSettings(image_size=64))
    assert small.status == "ok" and (small.original_width, small.original_height) == (2000, 2000)


def test_decode_memory_is_bounded_by_mode_and_bit_depth_not_only_pixels():
    settings = ResizeSettings()
    assert decode_bytes(9400, 9400, "I;16") > settings.max_decode_bytes >= decode_bytes(9400, 9400, "RGB")
    # The largest image max_pixels lets through decodes within the bound in its widest 8-bit mode.
    assert decode_bytes(9459, 9459, "RGBA") <= settings.max_decode_bytes


def test_a_jpeg_whose_header_claims_more_pixels_than_its_data_is_corrupt_not_grey():
    lying = jpeg_claiming_a_larger_frame(9400, 9400)
    out = process_image(lying, ResizeSettings(image_size=64))
    assert out.status == "corrupt_image" and out.jpeg is None
    assert "truncated: a 9400x9400 JPEG needs at least" in out.error_message
    honest = process_image(jpeg_claiming_a_larger_frame(640, 480), ResizeSettings(image_size=64))
    assert honest.status == "ok"


def _with_comments(jpeg: bytes, *texts: bytes) -> bytes:
    """``jpeg`` with COM segments holding ``texts`` right after its start-of-image marker."""
    segments = b"".join(b"\xff\xfe" + struct.pack(">H", 2 + len(text)) + text for text in texts)
    return jpeg[:2] + segments + jpeg[2:]


def test_the_frame_type_comes_from_the_jpeg_header_not_from_marker_bytes_anywhere():
    # An arithmetic-coding frame marker's two bytes in a comment do not make a Huffman JPEG exempt.
    lying = _with_comments(jpeg_claiming_a_larger_frame(9400, 9400), b"SOF9 is \xff\xc9")
    out = process_image(lying, ResizeSettings(image_size=64))
    assert out.status == "corrupt_image" and "truncated: a 9400x9400 JPEG" in out.error_message
    # A header too long to walk (over 1,000 segments) is judged by the markers found anywhere.
    padded = _with_comments(jpeg_claiming_a_larger_frame(9400, 9400), *[b"x"] * 1_001)
    assert process_image(padded, ResizeSettings(image_size=64)).status == "corrupt_image"
    honest = _with_comments(jpeg_claiming_a_larger_frame(640, 480), b"\xff\xc9", *[b"x"] * 1_001)
    assert process_image(honest, ResizeSettings(image_size=64)).status == "ok"


def test_an_exact_integer_shrink_averages_blocks_as_the_box_filter_does():
    # Noise, where filters differ most: Lanczos or bicubic land 4 levels away on average, BOX within 1.
    img = Image.merge("RGB", [Image.effect_noise((1024, 768), 60) for _ in range(3)])
    settings = ResizeSettings(resize_mode="keep_ratio_largest", image_size=256, encode_quality=100)
    out = decode(process_image(encode(img, "PNG"), settings).jpeg)
    box = decode(encode(img.resize((256, 192), Image.Resampling.BOX), quality=100))
    assert out.size == (256, 192)
    difference = np.abs(np.asarray(out, dtype=np.int16) - np.asarray(box, dtype=np.int16))
    assert difference.mean() < 1


def test_a_jpeg_whose_target_rounds_up_is_decoded_at_the_smallest_covering_scale():
    # 1024x683 shrinks to 256x171: a quarter-scale decode gives ceil(683 / 4) = 171 rows, enough.
    body = encode(photo_like(1024, 683, seed=6))
    opened = Image.open(io.BytesIO(body))
    request = resizer._draft_request(1024, 683, (256, 171))
    opened.draft(None, request)
    assert opened.size == (256, 171)
    out = process_image(body, ResizeSettings(resize_mode="keep_ratio_largest", image_size=256))
    assert (out.width, out.height) == (256, 171)
