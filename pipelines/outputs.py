"""Saving generated images the A1111 way, and reading their generation info back.

`OutputWriter(outputs_dir).save(...)` writes `outputs_dir/<mode>/YYYY-MM-DD/NNNNN-SEED.png` with the infotext
in a PNG "parameters" text chunk. NNNNN is one more than the highest 5-digit prefix in the folder. Writes are
atomic (hidden `.NNNNN-SEED.png.tmp` in the same folder, fsync, `os.replace`), so a crash or a kill never
leaves a partial file under a final name; `clean_stale()` (called at start-up) removes the hidden leftovers.
Numbers are handed out under the writer's lock and remembered per folder, so threads sharing a writer never get
the same number; the temporary file is created with O_EXCL and counts as taken, which also keeps separate
writers apart.
Pure Python + PIL, no torch.
"""

from __future__ import annotations

import io
import os
import re
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from PIL import Image
from PIL.PngImagePlugin import PngInfo

from pipelines.params.infotext import parse_infotext

_MODE_RE = re.compile(r"[a-z0-9_-]+")
_NUMBER_RE = re.compile(r"^\.?(\d{5})-")
_TMP_RE = re.compile(r"^\.\d{5}-[0-9a-z-]*\.png\.tmp$")  # what `_reserve` creates
_EXIF_IFD = 0x8769
_USER_COMMENT = 0x9286


class OutputWriter:
    """Numbers and writes output images below one outputs folder; safe to share between threads."""

    def __init__(self, outputs_dir: Path | str) -> None:
        self.outputs_dir = Path(outputs_dir)
        self._lock = threading.Lock()
        self._last: dict[Path, int] = {}  # highest number handed out per folder

    def folder(self, mode: str, now: datetime | None = None) -> Path:
        if not isinstance(mode, str) or not _MODE_RE.fullmatch(mode):
            raise ValueError(f"invalid output mode {mode!r}: use lowercase letters, digits, '_' or '-'")
        day = (now or datetime.now()).strftime("%Y-%m-%d")
        return self.outputs_dir / mode / day

    def save(self, image: Image.Image, infotext: str, mode: str, seed: int, *, now: datetime | None = None,
             suffix: str = "") -> Path:
        """Write NNNNN-SEED<suffix>.png; `suffix` is e.g. "-before-highres-fix" (letters, digits, dashes)."""
        if not re.fullmatch(r"[a-z0-9-]*", suffix):
            raise ValueError(f"invalid file name suffix {suffix!r}")
        folder = self.folder(mode, now)
        folder.mkdir(parents=True, exist_ok=True)
        root = self.outputs_dir.resolve()
        if not folder.resolve().is_relative_to(root):
            raise ValueError(f"output folder {folder} is outside {root}")

        pnginfo = PngInfo()
        pnginfo.add_text("parameters", infotext or "")  # tEXt, or iTXt when not latin-1
        buffer = io.BytesIO()
        image.save(buffer, format="PNG", pnginfo=pnginfo)

        fd, tmp, final = self._reserve(folder, f"{int(seed)}{suffix}")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(buffer.getbuffer())
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, final)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        _fsync_dir(folder)
        return final

    def clean_stale(self, older_than_s: float = 60.0) -> int:
        """Remove temporary files a crash or kill left behind (hidden `.NNNNN-SEED*.png.tmp` below the outputs
        folder, last written over `older_than_s` ago: a younger one may belong to a writer still at work).
        Returns how many were removed. Final names are never touched: a partial file never had one."""
        cutoff, removed = time.time() - older_than_s, 0
        if not self.outputs_dir.is_dir():
            return 0
        for path in self.outputs_dir.rglob(".*.png.tmp"):
            if not _TMP_RE.match(path.name):
                continue
            try:
                if path.is_file() and not path.is_symlink() and path.stat().st_mtime < cutoff:
                    path.unlink()
                    removed += 1
            except OSError:  # gone meanwhile, or not ours to remove
                continue
        return removed

    def _reserve(self, folder: Path, seed: str) -> tuple[int, Path, Path]:
        """Pick the next number and create its temporary file exclusively (holding the lock)."""
        with self._lock:
            taken = [int(m.group(1)) for e in os.scandir(folder) if (m := _NUMBER_RE.match(e.name))]
            number = max([self._last.get(folder, 0), *taken]) + 1
            while True:
                name = f"{number:05}-{seed}.png"
                tmp, final = folder / f".{name}.tmp", folder / name
                if not final.exists():
                    try:
                        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o644)
                        break
                    except FileExistsError:
                        pass
                number += 1
            self._last[folder] = number
        return fd, tmp, final


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # e.g. Windows cannot open directories
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_png(image: Image.Image, infotext: str, outputs_dir: Path, mode: str, seed: int, *,
             now: datetime | None = None) -> Path:
    """One-off save; share an `OutputWriter` between threads instead for guaranteed distinct numbers."""
    return OutputWriter(outputs_dir).save(image, infotext, mode, seed, now=now)


def _decode_user_comment(data: Any) -> str:
    """EXIF UserComment as written by A1111 (piexif: 8-byte charset prefix, UNICODE = UTF-16 big-endian)."""
    if isinstance(data, str):
        return data.strip("\x00")
    if not isinstance(data, (bytes, bytearray)) or not data:
        return ""
    prefix, body = bytes(data[:8]), bytes(data[8:])
    if prefix == b"UNICODE\x00":
        little = len(body) > 1 and body[1] == 0 and body[0] != 0
        return body.decode("utf-16-le" if little else "utf-16-be", errors="replace").rstrip("\x00")
    if prefix in (b"ASCII\x00\x00\x00", b"\x00" * 8):
        return body.decode("utf-8", errors="ignore").rstrip("\x00")
    if prefix == b"JIS\x00\x00\x00\x00\x00":
        return body.decode("shift_jis", errors="replace").rstrip("\x00")
    return bytes(data).decode("utf-8", errors="ignore").rstrip("\x00")


def read_png_info(image: Image.Image) -> dict[str, Any]:
    """Generation info of an image: {"info": parameters text or "", "items": string info, "parameters": parsed}.

    PNG text chunks (tEXt/zTXt/iTXt), the EXIF UserComment of JPEG/WEBP files and the GIF comment are read.
    """
    items: dict[str, str] = {}
    try:
        texts = dict(getattr(image, "text", None) or {})  # PNG: loads chunks after IDAT too
    except Exception:
        texts = {}
    for k, v in {**(image.info or {}), **texts}.items():
        if isinstance(k, str) and isinstance(v, str):
            items[k] = str(v)
    info = items.get("parameters", "")

    if not info and "exif" in (image.info or {}):
        try:
            comment = _decode_user_comment(image.getexif().get_ifd(_EXIF_IFD).get(_USER_COMMENT))
        except Exception:
            comment = ""
        if comment:
            items["UserComment"] = info = comment
    if not info and "comment" in (image.info or {}):
        comment = image.info["comment"]
        info = comment.decode("utf-8", errors="ignore") if isinstance(comment, bytes) else str(comment)

    return {"info": info, "items": items, "parameters": parse_infotext(info) if info else {}}
