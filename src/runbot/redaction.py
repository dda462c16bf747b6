"""Per-run redaction of secret values and their encodings, including encodings of larger strings.

Every secret value a run fetches is registered here before a plugin sees it; everything that leaves the
engine (outputs, errors, logs, audit, messages, exports) passes through `redact`.

Why it is built this way:

- **One matcher for all secrets.** Each registered value contributes its text forms (raw, URL, JSON and
  HTML escaped, whole-string base64) to one Aho-Corasick automaton (pyahocorasick), so masking a message
  costs one pass over it however many secrets are registered. The process-wide registry (log processors)
  keeps one such matcher over every live run instead of looping over the runs' redactors.
- **Windows, not just whole strings.** A secret also leaves inside a larger encoded string: an echoed
  `Authorization: Basic base64(user:secret)`, the base64 of a binary body, a hex dump, a re-encoded URL.
  Base64 of *any* string containing the secret holds one of 3 "cores" (one per alignment, see
  `base64_cores`), and hex holds the secret's hex; those go into the automaton, so finding them costs
  nothing extra, and a core's match also masks the partial characters beside it. Percent-encoding has
  no fixed form (clients differ in what they escape), so runs with `%XX` are decoded and searched again
  (twice nested at most, e.g. `%2541`); a match masks the characters of the run that encode it.
- **Bytes are searched as bytes.** Decoded windows and `redact_bytes` look at the data as Latin-1 text,
  one character per byte; the automaton also holds the UTF-8 bytes of non-ASCII forms in that view.
- **Mask first, then encode.** Code that encodes, quotes, joins or truncates text containing secrets
  calls `redact`/`redact_bytes`/`redact_argv` *before* doing so; the window search is the second line.
- **Registration is amortised.** Automatons are immutable once built; new forms go to a small one, and
  levels of geometric size are merged as they fill (see `Matcher`), so registering stays cheap and
  matching costs a handful of passes with thousands of live secrets (bench/redaction.py measures it).
"""

from __future__ import annotations

import base64
import html
import json
import re
import threading
import urllib.parse
from collections.abc import Callable, Iterable
from typing import Any

import ahocorasick

MASK = "****"
MIN_SECRET_LEN = 3  # shorter values would mask ordinary text everywhere; refuse to treat them as secrets
MIN_CORE = 6  # shorter base64 cores (secrets under ~6 bytes) would match ordinary base64 by chance
WINDOW_MIN_SECRET = 4  # forms shorter than this are not searched for inside decoded windows (noise)
WINDOW_DEPTH = 2  # a percent-encoded window inside a percent-encoded window (%2541) is still decoded
TEXT, BASE64_CORE = 0, 1  # word kinds: a base64 core's match also masks the partial characters beside it

_B64_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/-_")
_URL_CHARS = r"A-Za-z0-9\-._~!$&'()*+,;=:@/?#\[\]%"
_URL_RUN = re.compile(f"[{_URL_CHARS}]+")  # maximal runs only: linear, no backtracking over long text
_PCT_ESCAPE = re.compile(r"%[0-9A-Fa-f]{2}")
_PCT_TOKEN = re.compile(r"%[0-9A-Fa-f]{2}|[^%]+|%")
_TO_URLSAFE = str.maketrans("+/", "-_")

Span = tuple[int, int]
Mapper = Callable[[int, int], Span]  # a span of a decoded view -> the span of the source text


def encodings(value: str) -> set[str]:
    """The forms a secret commonly takes on its way out: raw, URL, base64 (std/url-safe), JSON- and HTML-escaped."""
    raw = value.encode()
    json_forms = {json.dumps(value)[1:-1], json.dumps(value, ensure_ascii=False)[1:-1]}
    forms = {
        value,
        urllib.parse.quote(value, safe=""),
        urllib.parse.quote(value),  # safe="/": the default of urllib and most clients
        urllib.parse.quote_plus(value),
        base64.b64encode(raw).decode(),
        base64.urlsafe_b64encode(raw).decode(),
        base64.b64encode(raw).decode().rstrip("="),
        base64.urlsafe_b64encode(raw).decode().rstrip("="),
        *json_forms,
        *(json.dumps(f, ensure_ascii=a)[1:-1] for f in json_forms for a in (True, False)),  # JSON in a JSON string
        html.escape(value),  # HTML exports and Slack mrkdwn escape &, < and >
        html.escape(value, quote=False),
    }
    return {f for f in forms if len(f) >= MIN_SECRET_LEN}


def base64_cores(raw: bytes) -> set[str]:
    """The base64 characters that depend only on `raw`, wherever `raw` sits inside a larger string.

    Base64 encodes 3 bytes as 4 characters, so `raw` starts at one of 3 alignments. At each, the first
    and last characters of the run also carry bits of the unknown neighbours; the characters between do
    not, and are the same in every encoding of every string containing `raw` at that alignment.
    """
    cores: set[str] = set()
    for k in range(3):
        enc = base64.b64encode(b"\0" * k + raw).decode("ascii")
        total = k + len(raw)
        core = enc[(0, 2, 3)[k] : 4 * (total // 3) + (0, 1, 2)[total % 3]]
        if len(core) >= MIN_CORE:
            cores |= {core, core.translate(_TO_URLSAFE)}
    return cores


def matcher_words(value: str) -> dict[str, int]:
    """What the automaton holds for one secret, each word with its kind (TEXT or BASE64_CORE).

    Its text forms; each non-ASCII form's UTF-8 bytes read as Latin-1 (how bytes are searched); the
    base64 cores of its UTF-8 bytes at the 3 alignments (std and url-safe); its hex (lower and upper case).
    """
    raw = value.encode()
    whole_b64 = {base64.b64encode(raw).decode(), base64.urlsafe_b64encode(raw).decode()}
    forms = {f for f in encodings(value) if f.rstrip("=") not in {w.rstrip("=") for w in whole_b64}}  # cores do it
    words = dict.fromkeys(forms | {f.encode("utf-8").decode("latin-1") for f in forms if not f.isascii()}, TEXT)
    for h in (raw.hex(), raw.hex().upper()):
        words.setdefault(h, TEXT)
    for core in base64_cores(raw):
        words.setdefault(core, BASE64_CORE)
    return words


def _merge(spans: list[Span]) -> list[Span]:
    spans.sort()
    merged: list[Span] = []
    for a, b in spans:
        if merged and a <= merged[-1][1]:
            if b > merged[-1][1]:
                merged[-1] = (merged[-1][0], b)
        else:
            merged.append((a, b))
    return merged


def _mask(text: str, spans: list[Span]) -> str:
    out: list[str] = []
    pos = 0
    for a, b in _merge(spans):
        out.append(text[pos:a])
        out.append(MASK)
        pos = b
    out.append(text[pos:])
    return "".join(out)


def _identity(a: int, b: int) -> Span:
    return a, b


class Matcher:
    """Aho-Corasick over a growing set of words, in levels of geometric size so adding stays cheap.

    Automatons are immutable once built, and building one holds the GIL for its whole duration (about
    2 s for 80,000 words), so rebuilding everything on each new secret is not an option. New words go to a
    small `recent` automaton (rebuilt by the next match); once it holds more than RECENT_WORDS it becomes a
    level of its own, and adjacent levels within a factor LEVEL_FACTOR of each other are merged, like a
    binary counter. Matching makes one pass per level: about log4(N/64) + 1 passes, 5 or 6 at 80,000 words.
    """

    RECENT_WORDS = 64
    LEVEL_FACTOR = 4

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._levels: list[tuple[dict[str, int], Any]] = []  # largest first
        self._recent_words: dict[str, int] = {}
        self._recent: Any = None
        self._dirty = False
        self._stale = 0  # words still matched that nobody needs any more (see discard)
        self._snapshot: tuple[Any, ...] = ()

    def __len__(self) -> int:
        return len(self._recent_words) + sum(len(w) for w, _ in self._levels)

    def _known(self, w: str) -> bool:
        return w in self._recent_words or any(w in words for words, _ in self._levels)

    def add(self, words: dict[str, int]) -> bool:
        with self._lock:
            new = {w: k for w, k in words.items() if not self._known(w)}
            if not new:
                return False
            self._recent_words.update(new)
            self._dirty = True
            return True

    def discard(self, count: int) -> None:
        """`count` words are no longer needed; the owner calls `rebuild` once stale words outnumber live ones."""
        with self._lock:
            self._stale += count

    @property
    def stale(self) -> int:
        return self._stale

    def rebuild(self, words: dict[str, int]) -> None:
        """Replace everything with `words` (the live ones), shedding stale words."""
        built = _build(words)
        with self._lock:
            self._levels = [(dict(words), built)] if built is not None else []
            self._recent_words, self._recent = {}, None
            self._stale, self._dirty = 0, False
            self._snapshot = tuple(a for _, a in self._levels)

    def automatons(self) -> tuple[Any, ...]:
        if self._dirty:
            with self._lock:
                if self._dirty:
                    if len(self._recent_words) > self.RECENT_WORDS:
                        self._levels.append((self._recent_words, _build(self._recent_words)))
                        self._recent_words, self._recent = {}, None
                        while len(self._levels) > 1 and (
                            len(self._levels[-2][0]) <= self.LEVEL_FACTOR * len(self._levels[-1][0])
                        ):
                            (big, _), (small, _) = self._levels[-2], self._levels[-1]
                            merged = {**big, **small}
                            self._levels[-2:] = [(merged, _build(merged))]
                    else:
                        self._recent = _build(self._recent_words)
                    self._dirty = False
                    autos = [a for _, a in self._levels]
                    self._snapshot = tuple(a for a in (*autos, self._recent) if a is not None)
        return self._snapshot


def _build(words: dict[str, int]) -> Any:
    if not words:
        return None
    automaton = ahocorasick.Automaton()
    for w, kind in words.items():
        automaton.add_word(w, (len(w), kind))
    automaton.make_automaton()
    return automaton


class _Scan:
    """One redaction pass: direct matches, then percent-decoded windows, collected as spans of the source."""

    def __init__(self, automatons: tuple[Any, ...], source: str) -> None:
        self.automatons = automatons
        self.source = source
        self.spans: list[Span] = []

    def run(self, text: str, mapper: Mapper = _identity, depth: int = 0) -> None:
        min_len = 0 if depth == 0 else WINDOW_MIN_SECRET
        for automaton in self.automatons:
            for end, (length, kind) in automaton.iter(text):
                if length < min_len:
                    continue
                a, b = mapper(end - length + 1, end + 1)
                if kind == BASE64_CORE and depth == 0:  # the neighbours carry a few bits of the secret too
                    a -= a > 0 and self.source[a - 1] in _B64_CHARS
                    b += b < len(self.source) and self.source[b] in _B64_CHARS
                    while b < len(self.source) and self.source[b] == "=" and b - a < length + 4:
                        b += 1  # padding carries no bits, but "****==" would still say "base64 here"
                self.spans.append((a, b))
        if depth < WINDOW_DEPTH and "%" in text:
            for m in _URL_RUN.finditer(text):
                if "%" in m.group() and _PCT_ESCAPE.search(m.group()):
                    self._percent(m.group(), m.start(), mapper, depth)

    def _percent(self, run: str, at: int, mapper: Mapper, depth: int) -> None:
        """Decode one percent-encoded run (clients differ in what they escape, so no fixed form would do).

        The map from decoded bytes back to characters of the run is built only if something matches.
        """
        view = urllib.parse.unquote_to_bytes(run)
        offsets: list[tuple[list[int], list[int]]] = []

        def chars(p: int, q: int) -> Span:
            if not offsets:
                offsets.append(_percent_offsets(run))
            starts, ends = offsets[0]
            return mapper(at + starts[p], at + ends[q - 1])

        self.run(view.decode("latin-1"), chars, depth + 1)
        if b"+" in view:  # form encoding: '+' is a space
            self.run(view.replace(b"+", b" ").decode("latin-1"), chars, depth + 1)


def _percent_offsets(run: str) -> tuple[list[int], list[int]]:
    """For each byte unquote_to_bytes(run) yields: where in `run` it starts and ends."""
    starts: list[int] = []
    ends: list[int] = []
    for tok in _PCT_TOKEN.finditer(run):
        if tok.end() - tok.start() == 3 and run[tok.start()] == "%":
            starts.append(tok.start())
            ends.append(tok.end())
        else:
            starts.extend(range(tok.start(), tok.end()))
            ends.extend(range(tok.start() + 1, tok.end() + 1))
    return starts, ends


def _redact_with(automatons: tuple[Any, ...], text: str) -> str:
    if not automatons or not text:
        return text
    scan = _Scan(automatons, text)
    scan.run(text)
    return _mask(text, scan.spans) if scan.spans else text


class Redactor:
    """Thread-safe set of secret values; `redact` replaces every registered form (and encoded window) with ****.

    `listener`, when given, receives the matcher words of every newly registered value (the process-wide
    registry uses it to keep one matcher over all runs).
    """

    def __init__(self, values: Iterable[str] = (), *, listener: Callable[[dict[str, int]], None] | None = None) -> None:
        self._values: set[str] = set()
        self._matcher = Matcher()
        self._listener = listener
        for v in values:
            self.register(v)

    def register(self, value: str) -> None:
        if not isinstance(value, str) or len(value) < MIN_SECRET_LEN or value in self._values:
            return
        self._values.add(value)
        words = matcher_words(value)
        if self._matcher.add(words) and self._listener is not None:
            self._listener(words)

    @property
    def words(self) -> int:
        """How many matcher words (forms) are registered."""
        return len(self._matcher)

    def __bool__(self) -> bool:
        return bool(self._values)

    def redact(self, text: str) -> str:
        if not text or not self._values:
            return text
        return _redact_with(self._matcher.automatons(), text)

    def redact_bytes(self, data: bytes) -> bytes:
        """Mask secrets in raw bytes (e.g. a binary body) *before* it is base64-encoded for storage."""
        if not data or not self._values:
            return data
        return self.redact(data.decode("latin-1")).encode("latin-1")

    def redact_argv(self, argv: Iterable[str]) -> list[str]:
        """A command line for display: each element masked on its own, before anything joins or cuts it."""
        return [self.redact(str(a)) for a in argv]

    def redact_obj(self, obj: Any) -> Any:
        if not self._values:
            return obj
        if isinstance(obj, str):
            return self.redact(obj)
        if isinstance(obj, dict):
            return {self.redact(k) if isinstance(k, str) else k: self.redact_obj(v) for k, v in obj.items()}
        if isinstance(obj, list | tuple):
            return [self.redact_obj(v) for v in obj]
        if isinstance(obj, bytes):
            return self.redact_bytes(obj)
        return obj

    def contains_secret(self, text: str) -> bool:
        return bool(text) and self.redact(text) != text


class RedactorRegistry:
    """Process-wide view over live runs' redactors, so log processors can mask without knowing the run.

    One matcher holds every live run's words (reference-counted), so `redact` costs the same with one
    live run or a thousand.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_run: dict[str, Redactor] = {}
        self._words_by_run: dict[str, dict[str, int]] = {}
        self._refs: dict[str, int] = {}
        self._kinds: dict[str, int] = {}
        self._all = Matcher()
        self.global_redactor = Redactor(listener=self._listener(None))

    def _listener(self, run_id: str | None) -> Callable[[dict[str, int]], None]:
        def added(words: dict[str, int]) -> None:
            with self._lock:
                if run_id is not None:
                    if run_id not in self._by_run:
                        return  # dropped meanwhile
                    mine = self._words_by_run.setdefault(run_id, {})
                    words = {w: k for w, k in words.items() if w not in mine}
                    mine.update(words)
                for w, k in words.items():
                    self._refs[w] = self._refs.get(w, 0) + 1
                    self._kinds[w] = k
            self._all.add(words)

        return added

    def for_run(self, run_id: str) -> Redactor:
        with self._lock:
            r = self._by_run.get(run_id)
            if r is None:
                r = self._by_run[run_id] = Redactor(listener=self._listener(run_id))
            return r

    def drop(self, run_id: str) -> None:
        with self._lock:
            self._by_run.pop(run_id, None)
            words = self._words_by_run.pop(run_id, {})
            gone = 0
            for w in words:
                n = self._refs.get(w, 0) - 1
                if n <= 0:
                    self._refs.pop(w, None)
                    self._kinds.pop(w, None)
                    gone += 1
                else:
                    self._refs[w] = n
            live = dict(self._kinds) if gone and self._all.stale + gone > max(256, len(self._refs)) else None
        if live is not None:
            self._all.rebuild(live)  # shed the words of finished runs once they outnumber the live ones
        elif gone:
            self._all.discard(gone)

    def redact(self, text: str) -> str:
        return _redact_with(self._all.automatons(), text)


REGISTRY = RedactorRegistry()
