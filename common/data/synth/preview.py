"""Contact sheet of a generated benchmark: one row per domain, images with captions."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

LABEL_W = 120  # left column with the domain name
CELL_W = 190  # one image and its caption
IMG_H = 192  # images are scaled to this height
CAPTION_LINES = 9
LINE_H = 13
PAD = 8
BG, INK, MUTED = (250, 250, 248), (20, 20, 24), (110, 110, 118)


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _wrap(draw: ImageDraw.ImageDraw, text: str, font, width: int, max_lines: int) -> list[str]:
    lines: list[str] = []
    line = ""
    for word in text.split():
        trial = f"{line} {word}".strip()
        if draw.textlength(trial, font=font) <= width or not line:
            line = trial
        else:
            lines.append(line)
            line = word
    if line:
        lines.append(line)
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        lines[-1] = lines[-1].rstrip(".,;") + " ..."
    return lines


def _domains(data_dir: Path) -> list[str]:
    manifest = data_dir / "manifest.json"
    if manifest.is_file():
        return list(json.loads(manifest.read_text(encoding="utf-8"))["domains"])
    return sorted(d.name for d in data_dir.iterdir() if (d / "reid_raw.json").is_file())


def preview(data_dir: Path | str, out_png: Path | str, per_domain: int = 6, seed: int = 0) -> Path:
    """Draw `per_domain` random images of every domain in `data_dir` with their first caption.

    Rows are domains (in manifest order), the domain name and its style at the
    row start. Returns the path of the PNG written.
    """
    data_dir, out_png = Path(data_dir), Path(out_png)
    if not data_dir.is_dir():
        raise FileNotFoundError(f"{data_dir}: no such folder (write one with `fedgckd data synth --out {data_dir}`)")
    names = _domains(data_dir)
    if not names:
        raise ValueError(f"{data_dir}: no domain folders with reid_raw.json found")
    if per_domain < 1:
        raise ValueError(f"per_domain must be at least 1, got {per_domain}")
    font, title = _font(11), _font(15)
    row_h = PAD + IMG_H + 4 + CAPTION_LINES * LINE_H + PAD
    sheet = Image.new("RGB", (LABEL_W + per_domain * CELL_W, row_h * len(names)), BG)
    draw = ImageDraw.Draw(sheet)
    for r, name in enumerate(names):
        ann = data_dir / name / "reid_raw.json"
        if not ann.is_file():
            raise FileNotFoundError(f"{ann}: missing annotation file of domain {name!r}")
        records = json.loads(ann.read_text(encoding="utf-8"))
        y0 = r * row_h
        if r:
            draw.line((0, y0, sheet.width, y0), fill=(200, 200, 205))
        draw.text((PAD, y0 + PAD), name, fill=INK, font=title)
        style = data_dir / name / "domain.json"
        if style.is_file():
            info = json.loads(style.read_text(encoding="utf-8"))
            s = info.get("style", {})
            desc = f"like {s.get('mimics', '?')}\n{s.get('paint', '')} paint\n{s.get('background', '')} background\n{s.get('grammar', '')} captions"
            draw.multiline_text((PAD, y0 + PAD + 24), desc, fill=MUTED, font=font, spacing=3)
        rng = np.random.default_rng([seed, r])
        picks = sorted(rng.choice(len(records), size=min(per_domain, len(records)), replace=False).tolist())
        for c, idx in enumerate(picks):
            rec = records[idx]
            x0 = LABEL_W + c * CELL_W
            path = data_dir / name / "imgs" / rec["file_path"]
            with Image.open(path) as im:
                im = im.convert("RGB")
                w = round(im.width * IMG_H / im.height)
                im = im.resize((w, IMG_H), Image.Resampling.NEAREST if im.height < IMG_H else Image.Resampling.LANCZOS)
            sheet.paste(im, (x0 + (CELL_W - w) // 2, y0 + PAD))
            lines = _wrap(draw, f"[{rec['id']}] " + rec["captions"][0], font, CELL_W - 2 * PAD, CAPTION_LINES)
            for k, line in enumerate(lines):
                draw.text((x0 + PAD, y0 + PAD + IMG_H + 4 + k * LINE_H), line, fill=INK, font=font)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out_png, format="PNG")
    return out_png
