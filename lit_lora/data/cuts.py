"""Where a text file may be cut into chunks, so that tokenizing the chunks one by one gives exactly the
tokens of the whole file (which is what packing assumes).

A cut is first proposed where tokenizers rarely join tokens: just after a line break (`\\n` or `\\r`) that
is followed by a non-space, else just before a space that starts a word. Then it is checked with the
tokenizer: a window of text on each side is tokenized together and apart, and the cut is kept only if
both give the same tokens (GPT-2's `"!\\n\\n" + "S"` fails: apart, the trailing `\\n\\n` is one token,
together it is two). Pre-tokenizers decide their splits from a few characters around, so a window of
WINDOW characters decides. When no proposed cut in a buffer passes, the reader keeps reading; a buffer of
MAX_ROW_BYTES with no passing cut is cut anyway, a quarter of the way in (at a proposal, else at a
character boundary), so memory stays flat for any file; such cuts are counted and reported.

Nothing here exists in `tokenizers` or `datasets`: they tokenize whatever rows they are given.
"""

from __future__ import annotations

from typing import Any, Iterator, Optional

WINDOW = 512  # characters each side of a cut that are tokenized to check it
MIN_RIGHT = 32  # a cut with fewer known characters after it (the buffer ends there) is not judged
MAX_PROPOSALS = 16  # cuts of each kind checked per buffer, last first


def proposals(buf: bytes) -> Iterator[int]:
    """Candidate cut positions in `buf`, best first: after line breaks followed by a non-space (last first),
    then before spaces that start a word (last first). Every position is at an ASCII byte, so both sides
    stay valid UTF-8."""
    for seps, after in (((b"\n", b"\r"), True), ((b" ",), False)):
        found: set[int] = set()
        for sep in seps:
            end = len(buf)
            while len(found) < MAX_PROPOSALS * len(seps):
                i = buf.rfind(sep, 0, end)
                if i <= 0:
                    break
                end = i
                cut = i + 1 if after else i
                nxt = buf[cut + (0 if after else 1) : cut + (1 if after else 2)]
                if 0 < cut < len(buf) and nxt and nxt not in b" \t\r\n":
                    found.add(cut)
        yield from sorted(found, reverse=True)[:MAX_PROPOSALS]


def agrees(tokenizer: Any, buf: bytes, cut: int) -> bool:
    """Whether tokenizing around `cut` in one piece gives the same tokens as the two sides apart."""
    left = buf[max(0, cut - 4 * WINDOW) : cut].decode("utf-8", errors="ignore")[-WINDOW:]
    right = buf[cut : cut + 4 * WINDOW].decode("utf-8", errors="ignore")[:WINDOW]
    if len(right) < MIN_RIGHT:  # what follows is not read yet (or is half a character): cannot tell
        return False

    def ids(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]

    return ids(left + right) == ids(left) + ids(right)


def last_char_boundary(buf: bytes) -> int:
    """The last position in `buf` that does not split a UTF-8 character (continuation bytes are 10xxxxxx)."""
    i = len(buf) - 1
    while i > 0 and buf[i] & 0xC0 == 0x80:
        i -= 1
    return i


def choose_cut(buf: bytes, tokenizer: Optional[Any], force: bool) -> tuple[int, bool]:
    """(cut position, checked) for `buf`; position -1: read more first. Without a tokenizer the best
    proposal is taken unchecked. With `force` (the buffer reached MAX_ROW_BYTES) some cut is always made."""
    candidates = list(proposals(buf))
    if tokenizer is None:
        return (candidates[0], False) if candidates else (last_char_boundary(buf) if force else -1, False)
    for cut in candidates:
        if agrees(tokenizer, buf, cut):
            return cut, True
    if not force:
        return -1, False
    # Forced: cut early (a row of about a quarter of the buffer), so no tokenizer call sees a megabyte-long
    # word: measured on 5/20/50 MB of text without a space, peak RSS 761/788/842 MB (1,553/1,871 MB when
    # cut at the buffer's end).
    quarter = buf[: len(buf) // 4]
    early = next(proposals(quarter), None)
    return (early if early is not None else last_char_boundary(quarter)), False
