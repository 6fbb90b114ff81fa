"""Where a prompt puts its subjects: "a cat on the left and a dog on the right" -> two regions.

`parse_layout(prompt)` finds the subjects a prompt places somewhere (left, right, top, bottom, a corner, or
one subject beside, above or below another) and the words that name each one. Each region then gets its own
reading of the prompt (`Layout.variants`): the same sentence with every other placed subject's words
replaced by its own ("a cat on the left and a cat on the right"), so the image tokens of the left half only
ever hear about the cat. The generator's cross-attention looks up each image token's own reading
(`region_attention_mask`); the rest of the model, and every image token outside the regions, sees the
prompt as written.

Phrasings understood, in any mix and any case:
    "A on the left and B on the right"       "on the left, A; on the right, B"     "left: A, right: B"
    "A at the top, B at the bottom"          "A in the top-left corner"             "A (left) and B (right)"
    "A to the left of B"   "A above B"   "A below B"   "A on top of B"   "the left half shows A"
A prompt that places nothing gives None and is drawn as before.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

# Regions as fractions of the image: (x0, y0, x1, y1).
REGIONS: dict[str, tuple[float, float, float, float]] = {
    "left": (0.0, 0.0, 0.5, 1.0),
    "right": (0.5, 0.0, 1.0, 1.0),
    "top": (0.0, 0.0, 1.0, 0.5),
    "bottom": (0.0, 0.5, 1.0, 1.0),
    "top left": (0.0, 0.0, 0.5, 0.5),
    "top right": (0.5, 0.0, 1.0, 0.5),
    "bottom left": (0.0, 0.5, 0.5, 1.0),
    "bottom right": (0.5, 0.5, 1.0, 1.0),
}
MAX_SUBJECTS = 8
# place words are looked for in this many leading characters: far more than any text encoder reads
MAX_LAYOUT_CHARS = 1000

_VERTICAL = {"top": "top", "upper": "top", "bottom": "bottom", "lower": "bottom"}
_SIDE = r"(?:top|bottom|upper|lower)(?:[\s-]*(?:left|right))?(?:[\s-]*hand)?|(?:left|right)(?:[\s-]*hand)?"
_SIDE_WORDS = re.compile(r"\b(top|bottom|upper|lower|left|right)\b", re.I)
_PART = r"(?:[\s-]+(?:side|half|edge|corner|part|end))?"
# "on the left", "at the top-right corner", "to the far left", "in the upper half"
_IMAGE = r"(?:the\s+|this\s+)?(?:image|picture|frame|canvas|scene|photo|page|screen|view)\b"
_PLACED = re.compile(r"\b(?:on|at|to|in|towards?|along|near|by)\s+(?:the\s+)?(?:very\s+|far\s+)?(?:" + _SIDE + r")"
                     + _PART + r"\b(?:\s+of\s+" + _IMAGE + r")?(?!\s+of\b)", re.I)
# "on top" (but not "on top of"), "up top", "down below" is left out: "below" is relational
_ON_TOP = re.compile(r"\b(?:on|up)\s+top\b(?!\s+of\b)", re.I)
# "left: A", "top half - A", "right = A"
_LABEL = re.compile(r"(?:^|(?<=[,;:.(|]\s)|(?<=[,;:.(|])|(?<=\band\s))[ \t]*(?:the\s+)?(?:" + _SIDE + r")" + _PART
                    + r"(?:\s*[:=\u2013\u2014-]\s*|\s+(?:shows?|has|holds|contains|features|is)\s+)", re.I | re.M)
# "A (left)", "A, left", "A left," at the end of a clause
_BARE = re.compile(r"\(\s*(?:" + _SIDE + r")" + _PART + r"\s*\)|(?<=\w),?\s+(?:" + _SIDE + r")" + _PART
                   + r"(?=\s*(?:[,;.]|\band\b|$))", re.I)
# "A to the left of B", "A above B", "A on top of B", "A underneath B"
_RELATION = re.compile(r"\b(?:(?:is|are|sits|stands|placed|located)\s+)?(?:"
                       r"(?:to\s+the\s+|on\s+the\s+)?(?P<lr>left|right)\s+of"
                       r"|(?P<up>above|on\s+top\s+of)"
                       r"|(?P<down>below|beneath|underneath|under))\b", re.I)
# words that end a subject's phrase: punctuation and joining words
_BREAK = re.compile(r"[,;:.!?()\[\]|\n\r]|\b(?:and|while|plus|then|but|also|whereas)\b|&", re.I)
# a phrase that names the whole image's background, shared by every region
_BACKGROUND = re.compile(r"(?:\b(?:on|over|against|with|in\s+front\s+of|upon)\s+)?(?:\b(?:a|an|the)\s+)?"
                         r"(?:\b[\w-]{1,40}\s+){0,3}?\b(?:background|backdrop|wall|backround|bg)s?\b"
                         r"(?:\s+(?:of|colou?r(?:ed)?)\s+[\w-]{1,40})?", re.I)
_LEAD = re.compile(r"^(?:\s|\b(?:there\s+is|there's|with|is|are|and|an?\s+(?:image|picture|photo|drawing|painting)"
                   r"\s+of)\b)+", re.I)
# joining words left behind once the subjects and place words are cut out of a prompt
_LEFTOVER = re.compile(r"\b(?:and|while|plus|then|but|also|whereas|there\s+is|there's|there\s+are|shows?|has|is|are"
                       r"|sits|stands|placed|located|of|the\s+other|everything)\b|&|\(\s*\)", re.I)
_TRAIL = re.compile(r"(?:\s|\b(?:is|are|sits|sitting|stands|standing|placed|located|appears|goes)\b)+$", re.I)


@dataclass(frozen=True)
class Placement:
    """One placed subject: the character span [start, end) of the words that name it, and its region's
    name (a key of REGIONS)."""

    start: int
    end: int
    region: str


@dataclass(frozen=True)
class Layout:
    prompt: str
    placements: tuple[Placement, ...]
    places: tuple[tuple[int, int], ...] = ()  # character spans of the place words ("on the left", "above")

    def boxes(self) -> torch.Tensor:
        """[K, 4] region boxes (x0, y0, x1, y1 as fractions), one per placement."""
        return torch.tensor([REGIONS[p.region] for p in self.placements], dtype=torch.float32)

    def subject(self, k: int) -> str:
        p = self.placements[k]
        return self.prompt[p.start : p.end]

    def subject_prompt(self, k: int) -> str:
        """Placement k's words alone, followed by what the prompt says that names no placed subject and no
        place (its background, its style): "a cat on the left and a dog on the right, on a blue background"
        -> "a cat, on a blue background". What a subject drawn on its own is asked for."""
        cut = sorted([(p.start, p.end) for p in self.placements] + list(self.places))
        rest, pos = [], 0
        for a, b in cut:
            if a > pos:
                rest.append(self.prompt[pos:a])
            pos = max(pos, b)
        rest.append(self.prompt[pos:])
        words = _LEFTOVER.sub(" ", " ".join(rest))
        words = re.sub(r"\s*([,;:.])(?:\s*[,;:.])*", r"\1 ", words)  # one mark where removed words left several
        words = re.sub(r"\s+", " ", words).strip(" ,;:.")
        return f"{self.subject(k)}, {words}" if words else self.subject(k)

    def variants(self) -> list[str]:
        """The prompt as each region reads it: for placement k, every other placement's words replaced by
        placement k's ("a cat on the left and a dog on the right" -> "a cat on the left and a cat on the
        right", "a dog on the left and a dog on the right")."""
        out = []
        for k in range(len(self.placements)):
            text = self.prompt
            for j in sorted(range(len(self.placements)), key=lambda j: -self.placements[j].start):
                if j != k:
                    p = self.placements[j]
                    text = text[: p.start] + self.subject(k) + text[p.end :]
            out.append(text)
        return out


def _region(m: re.Match) -> str:
    """The region a place phrase names: its first up/down word and its first left/right word."""
    words = [w.lower() for w in _SIDE_WORDS.findall(m.group(0).replace("-", " "))]
    v = next((_VERTICAL[w] for w in words if w in _VERTICAL), None)
    h = next((w for w in words if w in ("left", "right")), None)
    return f"{v} {h}" if v and h else v or h or "left"


def _trim(text: str, start: int, end: int) -> tuple[int, int]:
    """[start, end) without leading joining words and trailing verbs ("is", "sits") or spaces."""
    seg = text[start:end]
    lead = _LEAD.match(seg)
    s = start + (lead.end() if lead else 0)
    trail = _TRAIL.search(text[s:end])
    e = s + trail.start() if trail else end
    return s, e


def parse_layout(prompt: str) -> Layout | None:
    """The subjects `prompt` places, or None when it places none (see the module docstring)."""
    if not isinstance(prompt, str) or not prompt.strip():
        return None
    text = prompt[:MAX_LAYOUT_CHARS]  # spans index the prompt too: it starts with this
    # place words: (start, end, region, subject side: "before" / "after" / "either")
    marks: list[tuple[int, int, str, str]] = []
    for m in _LABEL.finditer(text):
        marks.append((m.start(), m.end(), _region(m), "after"))
    taken = [(a, b) for a, b, _, _ in marks]

    def free(a: int, b: int) -> bool:
        return all(b <= x or a >= y for x, y in taken)

    for pattern in (_PLACED, _ON_TOP, _BARE):
        for m in pattern.finditer(text):
            if free(m.start(), m.end()):
                region = "top" if pattern is _ON_TOP else _region(m)
                marks.append((m.start(), m.end(), region, "before" if pattern is _BARE else "either"))
                taken.append((m.start(), m.end()))
    relations = [m for m in _RELATION.finditer(text) if free(m.start(), m.end())]
    background = [(m.start(), m.end()) for m in _BACKGROUND.finditer(text)]
    if not marks and not relations:
        return None

    # boundaries a subject's words never cross: punctuation, joining words, backgrounds, other place words
    stops = sorted({(m.start(), m.end()) for m in _BREAK.finditer(text)} | set(background)
                   | {(a, b) for a, b, _, _ in marks} | {(m.start(), m.end()) for m in relations})

    def before(pos: int) -> tuple[int, int]:
        left = max((b for a, b in stops if b <= pos), default=0)
        return _trim(text, left, pos)

    def after(pos: int) -> tuple[int, int]:
        start = pos
        lead = re.match(r"[\s,;:\u2013\u2014-]*", text[pos:])  # "on the left, a cat": past the comma
        pos += lead.end() if lead else 0
        # the first boundary past the skipped punctuation; a place word the skip ran into ends it at once
        right = min((a for a, b in stops if a >= pos or (a >= start and b > pos)), default=len(text))
        return _trim(text, pos, right)

    placements: list[Placement] = []
    for a, b, region, side in sorted(marks):
        s, e = before(a) if side in ("before", "either") else (a, a)
        if e <= s and side in ("after", "either"):
            s, e = after(b)
        if e > s:
            placements.append(Placement(s, e, region))
    for m in relations:
        if m.group("lr"):
            first, second = m.group("lr").lower(), "right" if m.group("lr").lower() == "left" else "left"
        else:
            first, second = ("top", "bottom") if m.group("up") else ("bottom", "top")
        (s1, e1), (s2, e2) = before(m.start()), after(m.end())
        if any(s2 < y and e2 > x for x, y in background):  # "a cat above a blue background": in front of it
            continue
        if re.match(_IMAGE, text[s2:e2], re.I):  # "a cat to the left of the picture": one subject
            if e1 > s1:
                placements.append(Placement(s1, e1, first))
            continue
        if e1 > s1 and e2 > s2:
            placements += [Placement(s1, e1, first), Placement(s2, e2, second)]
    placements = sorted(set(placements), key=lambda p: p.start)[:MAX_SUBJECTS]
    places = tuple(sorted({(a, b) for a, b, _, _ in marks} | {(m.start(), m.end()) for m in relations}))
    return Layout(prompt, tuple(placements), places) if placements else None


def region_attention_mask(labels: torch.Tensor, boxes: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Which text tokens each image token may attend to: [B, 1, h*w, L] bool.

    labels [B, L] long: which reading of the prompt each token belongs to (0: the prompt as written, k >= 1:
    placement k's variant); boxes [B, K, 4]: placement k's region (x0, y0, x1, y1 fractions) in row k - 1
    (all zero rows: no region). An image token sees the readings of every region holding its centre, or
    the prompt as written when none does.
    """
    b, n_tok = labels.shape
    ys = (torch.arange(h, dtype=torch.float32) + 0.5) / h
    xs = (torch.arange(w, dtype=torch.float32) + 0.5) / w
    cy, cx = (g.reshape(-1) for g in torch.meshgrid(ys, xs, indexing="ij"))  # [N]
    x0, y0, x1, y1 = (boxes[..., i, None].to(torch.float32) for i in range(4))  # [B, K, 1]
    inside = (cx >= x0) & (cx < x1) & (cy >= y0) & (cy < y1)  # [B, K, N]
    outside = ~inside.any(1, keepdim=True)  # [B, 1, N]
    table = torch.cat([outside, inside], dim=1)  # [B, K + 1, N]: who sees reading k
    k = labels.clamp(0, table.shape[1] - 1)
    allowed = torch.gather(table, 1, k[:, :, None].expand(b, n_tok, h * w))  # [B, L, N]
    return allowed.transpose(1, 2)[:, None]
