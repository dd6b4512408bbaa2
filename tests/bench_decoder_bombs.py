"""Figures for issue 13's target "a decoder bomb of any kind costs the server at most 2x a normal frame's memory
and time" — a script, not a test (its figures depend on the machine):

    .venv/bin/python -m tests.bench_decoder_bombs [--repeats 5] [--repo OTHER_CHECKOUT] [--json]

Each frame goes through ``decode_for_input`` (the server's path, for a 256x256 model, max_frame_pixels 8294400)
in its own forked process (tests/unit/vision/isolated.py): the median time of ``--repeats`` calls and the growth
of the process's peak RSS, both as ratios to a normal 480x360 JPEG. A second table shows what the intake still
accepts at its most expensive — honest frames at the pixel limit — which is what max_frame_pixels is for.
``--repo`` measures another checkout's intake (e.g. an extracted older commit) with the same frames.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from tests.unit.vision.isolated import REPO, measure
from trtserve.bench import bombs as hi

LIMIT = 8294400


def bombs() -> list[tuple[str, bytes, int]]:
    nat = hi.natural_frame()
    tiny = hi.natural_frame(16, 16, seed=1)
    progressive = hi.jpeg(nat, progressive=True)
    return [
        ("PNG, IDAT declaring 0xFF00000C bytes", hi.png_idat_length_bomb(), LIMIT),
        ("PNG 12000x12000 of zeros", hi.png_zeros(12000, 12000), LIMIT),
        ("PNG 2800x2800, one row of IDAT", hi.png_short_idat(2800, 2800), LIMIT),
        ("PNG + 30 zTXt of 4 MB inflated", hi.png_with_chunks_before_idat(
            hi.png(nat), [hi.ztxt_chunk(4_000_000) for _ in range(30)]), LIMIT),
        ("JPEG SOF 65000x65000 (colour)", hi.jpeg_with_dims(hi.jpeg(tiny), 65000, 65000), LIMIT),
        ("JPEG SOF 20000x20000 (grayscale)", hi.jpeg_with_dims(hi.jpeg(tiny[..., 0]), 20000, 20000), LIMIT),
        ("JPEG grayscale 6000x6000 (real data)", hi.jpeg(np.full((6000, 6000), 90, np.uint8)), LIMIT),
        ("JPEG stray byte before SOF, 4000x4000", hi.jpeg_stray_byte_before_sof(
            hi.jpeg(np.full((4000, 4000, 3), 90, np.uint8))), LIMIT),
        ("JPEG progressive SOF 2880x2880 (in limit)", hi.jpeg_with_dims(hi.jpeg(tiny, progressive=True), 2880, 2880),
         LIMIT),
        ("JPEG progressive, 10 + 200 scans", hi.jpeg_many_scans(progressive, 200), LIMIT),
        ("BMP 20000x20000 header", hi.bmp_header_only(20000, 20000), LIMIT),
        ("TIFF 20000x20000 header", hi.tiff_header_only(20000, 20000), LIMIT),
        ("PPM 2000000x1 header (cv2.error)", hi.pnm_header_only(2_000_000, 1), LIMIT),
    ]


def accepted_worst() -> list[tuple[str, bytes, int]]:
    side = int(LIMIT ** 0.5)  # 2880
    return [
        (f"PNG {side}x{side} of zeros (honest, {side * side} px)", hi.png_zeros(side, side), LIMIT),
        (f"JPEG progressive {side}x{side} flat (honest)", hi.jpeg(np.full((side, side, 3), 90, np.uint8),
                                                                  progressive=True), LIMIT),
        ("JPEG 1920x1080 natural (honest)", hi.jpeg(hi.natural_frame(1920, 1080)), LIMIT),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--repo", type=Path, default=REPO)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    normal = [("normal 480x360 JPEG", hi.jpeg(hi.natural_frame()), LIMIT),
              ("normal 480x360 PNG (for reference)", hi.png(hi.natural_frame()), LIMIT)]
    hostile, honest = bombs(), accepted_worst()
    cases = normal + hostile + honest
    rows = measure(cases, repeats=args.repeats, repo=args.repo)
    if args.json:
        print(json.dumps(rows, indent=1))
        return
    base = rows[0]
    base_kb, base_s = max(base["rss_growth_kb"], 1), base["median_s"]
    print(f"normal frame: {base_s * 1e3:.2f} ms, peak RSS +{base['rss_growth_kb'] / 1024:.1f} MB "
          f"(intake of {args.repo})")
    print(f"{'frame':46s} {'bytes':>9s} {'time':>9s} {'x time':>7s} {'RSS+':>8s} {'x mem':>6s}  outcome")
    sizes = {name: len(data) for name, data, _ in cases}
    for k, row in enumerate(rows):
        if k in (2, 2 + len(hostile)):
            print("-- bombs --" if k == 2 else "-- accepted at the pixel limit (not bombs) --")
        outcome = "decoded" if row["error_type"] is None else f"{row['error_type']}: {row['message'][:70]}"
        print(f"{row['name']:46s} {sizes[row['name']]:9d} {row['median_s'] * 1e3:7.2f}ms "
              f"{row['median_s'] / base_s:7.2f} {row['rss_growth_kb'] / 1024:6.1f}MB "
              f"{row['rss_growth_kb'] / base_kb:6.2f}  {outcome}")


if __name__ == "__main__":
    main()
