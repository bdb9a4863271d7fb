"""The prompt helper's data and logic: the prompt's parts in the order the field study recommends,
negative-prompt presets written for the subject, and saved styles in A1111's `styles.csv` format.

Pure Python: no torch. The facts are RECOMMENDATIONS.md's "Prompt" and "Negative prompt" sections.

Styles follow A1111 (modules/styles.py): a CSV with the header `name,prompt,negative_prompt`; a style's text
that contains `{prompt}` has the user's text put in its place, any other style text is appended after the
user's text with ", ". Reading is tolerant as A1111's is (a BOM, a missing negative_prompt column, the old
`text` column, extra columns, `#` divider rows); writing is atomic (temp file + os.replace).
"""

from __future__ import annotations

import csv
import io
import os
import re
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Sequence

NEGATIVE_PRESETS: dict[str, str] = {
    "people": ("deformed, disfigured, extra limbs, missing limbs, mutated hands, poorly drawn hands, extra fingers, "
               "fused fingers, blurry face, poorly drawn face, bad anatomy, low quality, worst quality"),
    "landscapes": "3d, render, poorly drawn, low quality, worst quality, blurry, jpeg artifacts, watermark, text",
    "illustrations": ("photo, photorealistic, 3d, render, blurry, sketch, poorly drawn, low quality, worst quality, "
                      "jpeg artifacts, watermark, text, signature"),
}

NEGATIVE_PRESET_WHY: dict[str, str] = {
    "people": "anatomy guards: hands, fingers, limbs and faces are where people go wrong",
    "landscapes": "no anatomy guards (useless without people): against the 3D/render look, blur and artifacts",
    "illustrations": "keeps a drawn look: against photo/3D rendering, sketchiness, artifacts and signatures",
}


# -- the prompt's parts -------------------------------------------------------------------------------


@dataclass(frozen=True)
class PromptPart:
    name: str
    label: str
    why: str  # what goes there and why it sits at this place in the order
    example: str  # a placeholder


# Tokens near the start weigh more: the order is subject, its details, style/medium, extra details,
# quality words, lighting (RECOMMENDATIONS.md, "Prompt").
PROMPT_PARTS: tuple[PromptPart, ...] = (
    PromptPart("subject", "1. Subject",
               "What the image is of. It comes first: tokens near the start of the prompt weigh the most.",
               "a young woman"),
    PromptPart("details", "2. Subject details",
               "Clothes, age, pose, action of the subject, right after it so they stay tied to it.",
               "red wool coat, about 30 years old, walking, looking over her shoulder"),
    PromptPart("style", "3. Style / medium",
               "Photo, oil painting, illustration, an artist: after the subject, so the look does not outweigh "
               "what is shown.",
               "35mm photo"),
    PromptPart("extra", "4. Extra details",
               "Setting, background, secondary objects: they weigh less here than the subject does.",
               "snowy city street, shop windows, falling snow"),
    PromptPart("quality", "5. Quality words",
               "Highly detailed, sharp focus, best quality: they refine the whole, late in the prompt.",
               "highly detailed, sharp focus, best quality"),
    PromptPart("lighting", "6. Lighting",
               "Time of day, light direction, mood (cinematic): last, it sets the light over everything.",
               "golden hour, backlit, cinematic lighting"),
)
PART_NAMES: tuple[str, ...] = tuple(p.name for p in PROMPT_PARTS)

_STRAY = " \t\r\n,"
_EMPTY_ITEMS = re.compile(r"\s*,(?:\s*,)+\s*")  # "a, , b" -> "a, b"


def clean_part(text: str | None) -> str:
    """One part: surrounding whitespace and stray commas trimmed, empty items inside removed."""
    return _EMPTY_ITEMS.sub(", ", (text or "").strip(_STRAY)).strip(_STRAY)


def compose(parts: Mapping[str, str | None] | Sequence[str | None]) -> str:
    """The prompt from its parts, in PROMPT_PARTS order, non-empty ones joined with ", ".

    `parts`: a mapping part name -> text (missing names are empty; unknown names raise KeyError), or the
    texts in PROMPT_PARTS order."""
    if isinstance(parts, Mapping):
        unknown = set(parts) - set(PART_NAMES)
        if unknown:
            raise KeyError(f"unknown prompt part(s): {', '.join(sorted(unknown))}; parts: {', '.join(PART_NAMES)}")
        texts = [parts.get(n) for n in PART_NAMES]
    else:
        texts = list(parts)
        if len(texts) > len(PART_NAMES):
            raise ValueError(f"{len(texts)} parts given; there are {len(PART_NAMES)}: {', '.join(PART_NAMES)}")
    return ", ".join(t for t in map(clean_part, texts) if t)


# -- styles ---------------------------------------------------------------------------------------------

FIELDS = ("name", "prompt", "negative_prompt")
PLACEHOLDER = "{prompt}"


@dataclass(frozen=True)
class Style:
    name: str
    prompt: str = ""
    negative_prompt: str = ""


class UnknownStyle(LookupError):
    """A style name that is not in the styles file; the message lists the available ones."""

    def __init__(self, name: str, available: Iterable[str]):
        names = list(available)
        listed = ", ".join(repr(n) for n in names) if names else "none saved yet"
        super().__init__(f"Unknown style {name!r}. Available styles: {listed}.")
        self.name, self.available = name, names


def apply_style(text: str, style_text: str) -> str:
    """A1111's merge: `{prompt}` in the style text is replaced by `text`; otherwise the style text is appended
    after `text` with ", " (only one of them when the other is empty)."""
    text, style_text = text or "", style_text or ""
    if PLACEHOLDER in style_text:
        return style_text.replace(PLACEHOLDER, text)
    return ", ".join(p for p in (text.strip(), style_text.strip()) if p)


def apply_styles(prompt: str, negative: str, styles: Iterable[Style]) -> tuple[str, str]:
    """Each style's prompt and negative prompt applied in order -> (prompt, negative prompt)."""
    for s in styles:
        prompt = apply_style(prompt, s.prompt)
        negative = apply_style(negative, s.negative_prompt)
    return prompt, negative


def parse_styles(text: str) -> list[Style]:
    """styles.csv content -> styles, in file order (a later row with the same name replaces an earlier one in
    place). Tolerant like A1111: a BOM, spaces after commas, the old `text` column for prompt, a missing
    negative_prompt column, extra columns, short rows, blank rows and `#` divider rows."""
    reader = csv.DictReader(io.StringIO(text.removeprefix("\ufeff")), skipinitialspace=True)
    if not reader.fieldnames:  # an empty file
        return []
    if "name" not in [(f or "").strip() for f in reader.fieldnames]:
        raise ValueError(f"not a styles file: the first line should be the header {','.join(FIELDS)}, "
                         f"found {','.join(f or '' for f in reader.fieldnames)[:120]!r}")
    found: dict[str, Style] = {}
    for row in reader:
        row = {(k or "").strip(): v for k, v in row.items()}
        name = (row.get("name") or "").strip()
        if not name or name.startswith("#"):
            continue
        prompt = row.get("prompt") if row.get("prompt") is not None else row.get("text")
        found[name] = Style(name, prompt or "", row.get("negative_prompt") or "")
    return list(found.values())


def format_styles(styles: Iterable[Style]) -> str:
    """Styles -> styles.csv content (header name,prompt,negative_prompt; csv module quoting)."""
    buf = io.StringIO(newline="")
    writer = csv.writer(buf, lineterminator="\r\n")  # the csv module's default, as A1111's DictWriter writes
    writer.writerow(FIELDS)
    for s in styles:
        writer.writerow((s.name, s.prompt, s.negative_prompt))
    return buf.getvalue()


def read_styles(path: str | os.PathLike) -> list[Style]:
    """The styles of an A1111 styles.csv; [] when the file does not exist. ValueError when it is not a
    styles file (no `name` column, not UTF-8), csv.Error when it is malformed CSV."""
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            return parse_styles(f.read())
    except FileNotFoundError:
        return []


def write_styles(path: str | os.PathLike, styles: Iterable[Style]) -> None:
    """Write an A1111 styles.csv atomically (a temp file in the same folder, then os.replace): a crash or a
    concurrent reader never sees half a file. UTF-8 with a BOM (utf-8-sig), as A1111 writes it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        mode = path.stat().st_mode & 0o777  # keep the file's permissions (mkstemp's are 0600)
    except FileNotFoundError:
        mode = 0o644
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, mode)
        with os.fdopen(fd, "w", encoding="utf-8-sig", newline="") as f:
            f.write(format_styles(styles))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


class StyleStore:
    """The saved styles of one styles.csv, safe to use from several threads (UI sessions, API requests).

    The file is the truth: it is read again whenever its modification time or size changed, so a style added
    by hand (or by A1111 sharing the file) shows up without a restart. A missing file means no styles; it is
    created on the first save. A file that cannot be read lists no styles and is never overwritten: `error`
    says why, and save/delete raise ValueError with it until the file is fixed."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._lock = threading.Lock()
        self._styles: list[Style] = []
        self._stamp: tuple[int, int] | None = None  # (mtime_ns, size) of what _styles was read from
        self._error: str | None = None

    def _file_stamp(self) -> tuple[int, int] | None:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return None
        return st.st_mtime_ns, st.st_size

    def _load(self) -> list[Style]:
        """Current styles (lock held): re-read when the file changed since the last read."""
        stamp = self._file_stamp()
        if stamp != self._stamp:
            try:
                self._styles, self._error = (read_styles(self.path) if stamp else []), None
            except (ValueError, csv.Error, OSError) as e:
                self._styles, self._error = [], f"{self.path} cannot be read: {e}"
            self._stamp = stamp
        return self._styles

    def _writable(self) -> list[Style]:
        styles = list(self._load())
        if self._error:
            raise ValueError(f"{self._error}. Fix or move the file; it is not overwritten.")
        return styles

    def _store(self, styles: list[Style]) -> None:
        write_styles(self.path, styles)
        self._styles, self._stamp = styles, self._file_stamp()

    @property
    def error(self) -> str | None:
        """Why the styles file cannot be read, else None."""
        with self._lock:
            self._load()
            return self._error

    def list(self) -> list[Style]:
        with self._lock:
            return list(self._load())

    def names(self) -> list[str]:
        return [s.name for s in self.list()]

    def get(self, name: str) -> Style | None:
        with self._lock:
            return next((s for s in self._load() if s.name == name), None)

    def pick(self, names: Iterable[str]) -> list[Style]:
        """The styles named, in the order given; UnknownStyle for a name that is not saved."""
        with self._lock:
            by_name = {s.name: s for s in self._load()}
            order = [s.name for s in self._styles]
        picked = []
        for n in names:
            if n not in by_name:
                raise UnknownStyle(n, order)
            picked.append(by_name[n])
        return picked

    def save(self, style: Style) -> bool:
        """Add the style, or replace the one of the same name in place. Returns True when it replaced one.
        ValueError for an empty name (surrounding spaces are trimmed) or one starting with '#'."""
        name = (style.name or "").strip()
        if not name:
            raise ValueError("A style needs a name.")
        if name.startswith("#"):
            raise ValueError("A style name cannot start with '#' (A1111 reads such rows as dividers).")
        style = Style(name, style.prompt or "", style.negative_prompt or "")
        with self._lock:
            styles = self._writable()
            i = next((i for i, s in enumerate(styles) if s.name == name), None)
            if i is None:
                styles.append(style)
            else:
                styles[i] = style
            self._store(styles)
        return i is not None

    def delete(self, name: str) -> bool:
        """Remove the named style; False when there was none of that name."""
        with self._lock:
            styles = self._writable()
            kept = [s for s in styles if s.name != name]
            if len(kept) == len(styles):
                return False
            self._store(kept)
        return True
