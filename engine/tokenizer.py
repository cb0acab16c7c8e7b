"""SentencePiece-style BPE tokenizer from a GGUF vocabulary, matching llama.cpp's SPM tokenizer.

Mirrors llama.cpp (src/llama-vocab.cpp) for ``tokenizer.ggml.model = "llama"``:

- token attributes from ``tokenizer.ggml.token_type`` (1 normal, 2 unknown, 3 control, 4 user-defined,
  5 unused, 6 byte), plus llama.cpp's text-based overrides at load time (end-of-generation / FIM
  spellings such as ``<end_of_turn>`` or ``</s>`` become control tokens, control tokens named
  "unused" get the unused bit);
- special-token partition before BPE: every control, user-defined and unknown token is cut out of the
  raw text, longest first; with ``parse_special=False`` control and unknown tokens are left in the text
  but user-defined ones (Gemma's ``\\n``, space runs, HTML tags) are still cut out;
- per raw fragment: optional space prefix, ``' '`` -> ``'▁'``, split into characters, merge the
  adjacent pair whose joined text is a token with the best score (ties: leftmost) until none is left,
  then unknown characters fall back to ``<0xNN>`` byte tokens;
- detokenize: control/unknown pieces only when asked, user-defined pieces verbatim, normal pieces with
  ``'▁'`` -> ``' '``, byte tokens as raw bytes reassembled into UTF-8.

Loading: ``Tokenizer.from_gguf`` parses the GGUF key/value section itself (``gguf.GGUFReader`` takes
seconds for 262144 strings); ``save``/``load`` keep a compact cache (tokens as one UTF-8 text plus
offsets, scores and types as ``.npy``).
"""

from __future__ import annotations

import codecs
import heapq
import json
import mmap
import struct
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from turbospec.errors import UserError

# token types as stored in GGUF (llama_token_type)
TYPE_UNDEFINED, TYPE_NORMAL, TYPE_UNKNOWN, TYPE_CONTROL, TYPE_USER_DEFINED, TYPE_UNUSED, TYPE_BYTE = range(7)

# token attributes (llama_token_attr bit flags)
ATTR_UNDEFINED = 0
ATTR_UNKNOWN = 1 << 0
ATTR_UNUSED = 1 << 1
ATTR_NORMAL = 1 << 2
ATTR_CONTROL = 1 << 3
ATTR_USER_DEFINED = 1 << 4
ATTR_BYTE = 1 << 5

_TYPE_TO_ATTR = {
    TYPE_NORMAL: ATTR_NORMAL,
    TYPE_UNKNOWN: ATTR_UNKNOWN,
    TYPE_CONTROL: ATTR_CONTROL,
    TYPE_USER_DEFINED: ATTR_USER_DEFINED,
    TYPE_UNUSED: ATTR_UNUSED,
    TYPE_BYTE: ATTR_BYTE,
}
_ATTR_SPECIAL = ATTR_UNKNOWN | ATTR_CONTROL  # hidden unless special pieces are asked for

SPACE = "\u2581"  # '▁'

# llama.cpp's spellings that mark end-of-turn / FIM / end-of-generation tokens (llama-vocab.cpp load()).
_EOT_TEXTS = (
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<|end_of_text|>", "<EOT>",
    "_<EOT>", "<\uff5cend\u2581of\u2581sentence\uff5c>", "<end_of_utterance>",
)
_EOM_TEXTS = ("<|eom_id|>",)
_FIM_TEXTS = (
    ("<|fim_prefix|>", "<fim-prefix>", "<fim_prefix>", "<PRE>", "<|code_prefix|>", "<|prefix|>"),
    ("<|fim_suffix|>", "<fim-suffix>", "<fim_suffix>", "<SUF>", "<|code_suffix|>", "<|suffix|>"),
    ("<|fim_middle|>", "<fim-middle>", "<fim_middle>", "<MID>", "<|code_middle|>", "<|middle|>"),
    ("<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"),
    ("<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>"),
    ("<|file_sep|>",),
)
_EOG_TEXTS = (
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>", "<|calls|>",
    "<end_of_turn>", "<|endoftext|>", "</s>", "<|eom_id|>", "<EOT>", "_<EOT>", "[EOT]", "[EOS]",
    "<|end_of_text|>", "<end_of_utterance>", "<eos>", "<turn|>", "<|tool_response>",
)
_ALWAYS_RENDERED = ("<|channel|>", "<|message|>", "<|start|>", "<|constrain|>")

CACHE_FORMAT = "turbospec.tokenizer/1"


def _llamacpp_attrs(
    tokens: Sequence[str], token_types: np.ndarray, vocab: dict[str, int], eos_id: int | None
) -> tuple[list[int], frozenset[int]]:
    """Token attributes and end-of-generation ids as llama.cpp derives them at load time."""
    table = np.zeros(max(int(np.max(token_types, initial=0)), TYPE_BYTE) + 1, dtype=np.int64)
    for t, a in _TYPE_TO_ATTR.items():
        table[t] = a
    types = np.asarray(token_types, dtype=np.int64)
    attrs = np.where(types >= 0, table[np.clip(types, 0, None)], ATTR_UNDEFINED).tolist()

    def force_control(text: str) -> int | None:
        tid = vocab.get(text)
        if tid is not None:
            attrs[tid] |= ATTR_CONTROL
        return tid

    # EOT / EOM / FIM: llama.cpp takes the first spelling it meets and forces it to control.
    eot = eom = None
    for group in (_EOT_TEXTS, _EOM_TEXTS, *_FIM_TEXTS):
        found = [vocab[t] for t in group if t in vocab]
        if found:
            tid = min(found)  # llama.cpp's pick among several depends on hash order; take the lowest id
            attrs[tid] |= ATTR_CONTROL
            if group is _EOT_TEXTS:
                eot = tid
            elif group is _EOM_TEXTS:
                eom = tid
    fim_eog = []
    for group in _FIM_TEXTS[3:]:  # FIM pad / repo / sep end generation
        found = [vocab[t] for t in group if t in vocab]
        if found:
            fim_eog.append(min(found))
    # control tokens named "unused" are marked unused as well
    for tid in np.flatnonzero(np.asarray(attrs) & ATTR_CONTROL).tolist():
        if "unused" in tokens[tid]:
            attrs[tid] |= ATTR_UNUSED
    eog = set(fim_eog)
    for text in _EOG_TEXTS:
        tid = force_control(text)
        if tid is not None:
            eog.add(tid)
    for text in _ALWAYS_RENDERED:
        if text in vocab:
            attrs[vocab[text]] = ATTR_USER_DEFINED
    for tid in (eos_id, eot, eom):
        if tid is not None:
            eog.add(tid)
    texts = {tokens[t]: t for t in eog}
    if "<|end|>" in texts and (
        ("<|return|>" in texts and "<|call|>" in texts) or ("<|calls|>" in texts and "<|flush|>" in texts)
    ):
        eog.discard(texts["<|end|>"])
        attrs[texts["<|end|>"]] = ATTR_USER_DEFINED
    if "<|tool_response>" in texts and "</s>" in texts:  # gemma4 / paddleocr workaround
        eog.discard(texts["</s>"])
        attrs[texts["</s>"]] = ATTR_NORMAL
    return attrs, frozenset(eog)


class Tokenizer:
    """llama.cpp-compatible SentencePiece BPE tokenizer (``tokenizer.ggml.model = "llama"``)."""

    def __init__(
        self,
        tokens: list[str],
        scores: np.ndarray,
        token_types: np.ndarray,
        bos_id: int | None,
        eos_id: int | None,
        unk_id: int | None,
        add_bos: bool,
        add_space_prefix: bool,
        *,
        add_eos: bool = False,
    ) -> None:
        n = len(tokens)
        scores = np.asarray(scores, dtype=np.float32)
        token_types = np.asarray(token_types, dtype=np.int32)
        if scores.shape != (n,) or token_types.shape != (n,):
            raise UserError(
                f"tokenizer arrays disagree: {n} tokens, {scores.size} scores, {token_types.size} types; "
                "the GGUF vocabulary is malformed, re-convert the model"
            )
        # llama.cpp replaces empty tokens so every text maps to one id; later duplicates win
        self._tokens = list(tokens)
        if "" in self._tokens:
            self._tokens = [t if t else f"[EMPTY_{i}]" for i, t in enumerate(self._tokens)]
        self._scores = scores
        self._types = token_types
        self._score = scores.tolist()
        self._vocab: dict[str, int] = dict(zip(self._tokens, range(n), strict=True))
        for name, tid in (("bos", bos_id), ("eos", eos_id), ("unk", unk_id)):
            if tid is not None and not 0 <= tid < n:
                raise UserError(f"{name} token id {tid} is outside the vocabulary of {n} tokens; fix it")
        self.bos_id, self.eos_id, self.unk_id = bos_id, eos_id, unk_id
        self.add_bos, self.add_eos = bool(add_bos), bool(add_eos)
        self.add_space_prefix = bool(add_space_prefix)
        if self.add_bos and bos_id is None:
            raise UserError("the vocabulary asks for a BOS token but names none; set bos_token_id")
        self._attrs, self.eog_ids = _llamacpp_attrs(self._tokens, token_types, self._vocab, eos_id)
        # special tokens cut out before BPE, longest first (llama.cpp's cache_special_tokens)
        special_mask = np.asarray(self._attrs) & (ATTR_CONTROL | ATTR_USER_DEFINED | ATTR_UNKNOWN)
        special = np.flatnonzero(special_mask).tolist()
        special.sort(key=lambda i: -len(self._tokens[i].encode("utf-8", "surrogateescape")))
        self._special = special
        self._byte_ids = [self._byte_token(b) for b in range(256)]
        self._piece_cache: dict[tuple[int, bool], bytes] = {}

    # ------------------------------------------------------------------ properties

    @property
    def n_vocab(self) -> int:
        return len(self._tokens)

    @property
    def tokens(self) -> list[str]:
        return self._tokens

    @property
    def scores(self) -> np.ndarray:
        return self._scores

    @property
    def token_types(self) -> np.ndarray:
        return self._types

    def token_attr(self, tid: int) -> int:
        """llama.cpp's attribute bits of a token (ATTR_* flags)."""
        return self._attrs[tid]

    def is_eog(self, tid: int) -> bool:
        """True for tokens that end generation in llama.cpp (EOS, <end_of_turn>, ...)."""
        return tid in self.eog_ids

    def is_control(self, tid: int) -> bool:
        return bool(self._attrs[tid] & ATTR_CONTROL)

    def find_token(self, text: str) -> int | None:
        """The id of the token spelled exactly ``text`` (e.g. "<end_of_turn>"), or None."""
        return self._vocab.get(text)

    def _byte_token(self, b: int) -> int | None:
        tid = self._vocab.get(f"<0x{b:02X}>")
        if tid is None:
            tid = self._vocab.get(bytes([b]).decode("latin-1") if b < 128 else chr(0xDC00 + b))
        return tid

    # ------------------------------------------------------------------ encode

    def encode(self, text: str, add_bos: bool | None = None, parse_special: bool = True) -> list[int]:
        """Token ids of ``text`` as llama.cpp's ``llama_tokenize(text, add_special, parse_special)``.

        ``add_bos=None`` follows the vocabulary (``tokenizer.ggml.add_bos_token``), True forces a BOS,
        False adds none (llama.cpp's ``add_special=False``: no BOS and no EOS).
        """
        add_special = self.add_bos if add_bos is None else bool(add_bos)
        out: list[int] = []
        if add_special and self.bos_id is not None:
            out.append(self.bos_id)
        is_prev_special = True
        for frag in self._partition(text, parse_special):
            if isinstance(frag, int):
                out.append(frag)
                is_prev_special = True
            else:
                raw = text[frag[0] : frag[1]]
                if self.add_space_prefix and is_prev_special:
                    raw = " " + raw
                self._spm(raw.replace(" ", SPACE), out)
                is_prev_special = False
        if add_special and self.add_eos and self.eos_id is not None:
            out.append(self.eos_id)
        return out

    def _partition(self, text: str, parse_special: bool) -> list[tuple[int, int] | int]:
        """Split raw text into (start, end) spans and special token ids (tokenizer_st_partition)."""
        frags: list[tuple[int, int] | int] = [(0, len(text))] if text else []
        if not frags:
            return frags
        # cheap pre-filter: a special token can only match where its first two characters occur
        pairs = {text[i : i + 2] for i in range(len(text))} | set(text)
        for tid in self._special:
            if not parse_special and self._attrs[tid] & (ATTR_CONTROL | ATTR_UNKNOWN):
                continue
            sp = self._tokens[tid]
            if sp[:2] not in pairs or sp not in text:
                continue
            new: list[tuple[int, int] | int] = []
            for frag in frags:
                if isinstance(frag, int):
                    new.append(frag)
                    continue
                start, end = frag
                while True:
                    m = text.find(sp, start, end)
                    if m < 0:
                        if start < end:
                            new.append((start, end))
                        break
                    if m > start:
                        new.append((start, m))
                    new.append(tid)
                    start = m + len(sp)
            frags = new
        return frags

    def _spm(self, text: str, out: list[int]) -> None:
        """llm_tokenizer_spm_session::tokenize on one escaped fragment (one symbol per character).

        Symbol i starts at character i; merging keeps the left index, so a symbol is (i, length[i]).
        Heap entries are (-score, left, right, length): best score first, then the leftmost pair.
        """
        n = len(text)
        if n == 0:
            return
        vocab, score = self._vocab, self._score
        length = [1] * n
        prev = list(range(-1, n - 1))
        nxt = list(range(1, n + 1))
        nxt[-1] = -1
        heap = []
        for i in range(n - 1):
            tid = vocab.get(text[i : i + 2])
            if tid is not None:
                heap.append((-score[tid], i, i + 1, 2))
        heapq.heapify(heap)
        heappop, heappush = heapq.heappop, heapq.heappush
        while heap:
            _, left, right, size = heappop(heap)
            nl, nr = length[left], length[right]
            if nl == 0 or nr == 0 or nl + nr != size:
                continue  # stale: one side was merged since this pair was queued
            length[left] = size
            length[right] = 0
            after = nxt[right]
            nxt[left] = after
            if after >= 0:
                prev[after] = left
            before = prev[left]
            if before >= 0:
                tid = vocab.get(text[before : left + size])
                if tid is not None:
                    heappush(heap, (-score[tid], before, left, length[before] + size))
            if after >= 0:
                span = size + length[after]
                tid = vocab.get(text[left : left + span])
                if tid is not None:
                    heappush(heap, (-score[tid], left, after, span))
        i = 0
        while i != -1:
            piece = text[i : i + length[i]]
            tid = vocab.get(piece)
            if tid is not None:
                out.append(tid)
            else:  # only single characters can be unknown: fall back to their UTF-8 bytes
                for b in piece.encode("utf-8", "surrogatepass"):
                    bid = self._byte_ids[b]
                    out.append(bid if bid is not None else self._unk_or_fail(piece))
            i = nxt[i]

    def _unk_or_fail(self, piece: str) -> int:
        if self.unk_id is None:
            raise UserError(
                f"cannot tokenize {piece!r}: the vocabulary has no byte tokens and no unknown token"
            )
        return self.unk_id

    # ------------------------------------------------------------------ decode

    def token_to_bytes(self, tid: int, special: bool = False) -> bytes:
        """The bytes of one token as llama.cpp's ``llama_token_to_piece(..., lstrip=0, special)``."""
        key = (tid, special)
        piece = self._piece_cache.get(key)
        if piece is not None:
            return piece
        if not 0 <= tid < len(self._tokens):
            raise UserError(f"token id {tid} is outside the vocabulary of {len(self._tokens)} tokens")
        attr, text = self._attrs[tid], self._tokens[tid]
        if not special and attr & _ATTR_SPECIAL:
            piece = b""
        elif attr & (_ATTR_SPECIAL | ATTR_USER_DEFINED):
            piece = text.encode("utf-8", "surrogateescape")
        elif attr & ATTR_NORMAL:
            piece = text.replace(SPACE, " ").encode("utf-8", "surrogateescape")
        elif attr & ATTR_BYTE:
            piece = bytes([int(text[3:5], 16)])
        else:  # unused / undefined tokens render as nothing
            piece = b""
        self._piece_cache[key] = piece
        return piece

    def token_to_piece(self, tid: int, special: bool = False) -> str:
        """One token's text. A byte token of a multi-byte character is not text on its own: it comes
        back as U+FFFD; stream with :class:`Detokenizer` instead."""
        return self.token_to_bytes(tid, special).decode("utf-8", "replace")

    def decode_bytes(self, ids: Iterable[int], skip_special: bool = True) -> bytes:
        """llama.cpp's ``llama_detokenize(ids, remove_special=skip_special,
        unparse_special=not skip_special)``."""
        ids = list(ids)
        remove_space = self.add_space_prefix
        if skip_special and self.add_bos and ids and ids[0] == self.bos_id:
            remove_space = False
            ids = ids[1:]
        if skip_special and self.add_eos and ids and ids[-1] == self.eos_id:
            ids = ids[:-1]
        parts = [self.token_to_bytes(t, not skip_special) for t in ids]
        if remove_space and parts and parts[0].startswith(b" "):
            parts[0] = parts[0][1:]
        return b"".join(parts)

    def decode(self, ids: Iterable[int], skip_special: bool = True) -> str:
        """Text of ``ids``: byte tokens reassembled into UTF-8, '▁' -> ' ', control tokens hidden unless
        ``skip_special=False``. Invalid UTF-8 (e.g. a cut-off character) becomes U+FFFD."""
        return self.decode_bytes(ids, skip_special).decode("utf-8", "replace")

    def detokenizer(self, skip_special: bool = True) -> Detokenizer:
        return Detokenizer(self, skip_special)

    # ------------------------------------------------------------------ loading and caching

    @classmethod
    def from_gguf(cls, path: str | Path, cache_dir: str | Path | None = None) -> Tokenizer:
        """Build from a GGUF file's ``tokenizer.ggml.*`` keys.

        With ``cache_dir`` (a folder already keyed by the file's hash), load the cache saved there, or
        parse the file and save it.
        """
        if cache_dir is not None:
            cached = cls.try_load(cache_dir)
            if cached is not None:
                return cached
        kv = read_gguf_tokenizer_kv(path)
        model = kv.get("tokenizer.ggml.model")
        if model != "llama":
            raise UserError(
                f"{path}: tokenizer model {model!r} is not supported; turbospec reads SentencePiece "
                "vocabularies (tokenizer.ggml.model = 'llama'), e.g. Gemma or Llama 2 GGUFs"
            )
        tokens = kv.get("tokenizer.ggml.tokens")
        if not tokens:
            raise UserError(f"{path}: no tokenizer.ggml.tokens in the file; re-convert the model")
        n = len(tokens)
        scores = kv.get("tokenizer.ggml.scores")
        types = kv.get("tokenizer.ggml.token_type")
        tok = cls(
            tokens,
            np.zeros(n, np.float32) if scores is None else scores,
            np.full(n, TYPE_NORMAL, np.int32) if types is None else types,
            bos_id=kv.get("tokenizer.ggml.bos_token_id", 1),
            eos_id=kv.get("tokenizer.ggml.eos_token_id", 2),
            unk_id=kv.get("tokenizer.ggml.unknown_token_id", 0),
            add_bos=kv.get("tokenizer.ggml.add_bos_token", True),
            add_space_prefix=kv.get("tokenizer.ggml.add_space_prefix", True),
            add_eos=kv.get("tokenizer.ggml.add_eos_token", False),
        )
        if cache_dir is not None:
            try:
                tok.save(cache_dir)
            except OSError:
                pass  # a read-only cache folder only costs the next start this parse again
        return tok

    def save(self, directory: str | Path) -> None:
        """Write the compact cache form: tokenizer.json, tokens.txt, tokenizer_{offsets,scores,types}.npy."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        lengths = np.fromiter((len(t) for t in self._tokens), dtype=np.int64, count=len(self._tokens))
        offsets = np.zeros(len(self._tokens) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        (d / "tokens.txt").write_bytes("".join(self._tokens).encode("utf-8", "surrogateescape"))
        np.save(d / "tokenizer_offsets.npy", offsets)
        np.save(d / "tokenizer_scores.npy", self._scores)
        np.save(d / "tokenizer_types.npy", self._types)
        meta = {
            "format": CACHE_FORMAT, "n_vocab": self.n_vocab, "bos_id": self.bos_id, "eos_id": self.eos_id,
            "unk_id": self.unk_id, "add_bos": self.add_bos, "add_eos": self.add_eos,
            "add_space_prefix": self.add_space_prefix,
        }
        # written last: its presence marks a complete cache
        (d / "tokenizer.json").write_text(json.dumps(meta))

    @classmethod
    def try_load(cls, directory: str | Path) -> Tokenizer | None:
        """Load a cache written by :meth:`save`; None when it is missing, partial or of another format."""
        d = Path(directory)
        try:
            meta = json.loads((d / "tokenizer.json").read_text())
            if meta.get("format") != CACHE_FORMAT:
                return None
            blob = (d / "tokens.txt").read_bytes().decode("utf-8", "surrogateescape")
            offsets = np.load(d / "tokenizer_offsets.npy").tolist()
            scores = np.load(d / "tokenizer_scores.npy")
            types = np.load(d / "tokenizer_types.npy")
        except (OSError, ValueError, KeyError):
            return None
        n = meta["n_vocab"]
        if len(offsets) != n + 1 or offsets[-1] != len(blob) or scores.shape != (n,) or types.shape != (n,):
            return None
        tokens = [blob[a:b] for a, b in zip(offsets[:-1], offsets[1:], strict=True)]
        return cls(
            tokens, scores, types, meta["bos_id"], meta["eos_id"], meta["unk_id"], meta["add_bos"],
            meta["add_space_prefix"], add_eos=meta["add_eos"],
        )

    @classmethod
    def load(cls, directory: str | Path) -> Tokenizer:
        tok = cls.try_load(directory)
        if tok is None:
            raise UserError(f"no usable tokenizer cache in {directory}; delete the folder to rebuild it")
        return tok


class Detokenizer:
    """Incremental decoding for streaming: ``push(id)`` returns only complete UTF-8 text.

    Byte tokens of a multi-byte character are held until the character is complete; ``flush()``
    returns whatever is left (an incomplete character as U+FFFD). The concatenation of all returned
    strings equals ``tokenizer.decode(ids, skip_special)``.
    """

    def __init__(self, tokenizer: Tokenizer, skip_special: bool = True) -> None:
        self._tok = tokenizer
        self._skip = skip_special
        self._dec = codecs.getincrementaldecoder("utf-8")("replace")
        self._first = True
        self._remove_space = tokenizer.add_space_prefix

    def push(self, tid: int) -> str:
        tok = self._tok
        if self._first:
            self._first = False
            if self._skip and tok.add_bos and tid == tok.bos_id:
                self._remove_space = False
                return ""
        piece = tok.token_to_bytes(tid, not self._skip)
        if self._remove_space:
            self._remove_space = False
            if piece.startswith(b" "):
                piece = piece[1:]
        return self._dec.decode(piece)

    def flush(self) -> str:
        return self._dec.decode(b"", final=True)


# ---------------------------------------------------------------------- GGUF key/value section

_SCALAR = {
    0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d",
}
_NP = {
    0: "<u1", 1: "<i1", 2: "<u2", 3: "<i2", 4: "<u4", 5: "<i4", 6: "<f4", 7: "?",
    10: "<u8", 11: "<i8", 12: "<f8",
}
_STRING, _ARRAY = 8, 9


def read_gguf_tokenizer_kv(path: str | Path) -> dict:
    """The ``tokenizer.*`` keys of a GGUF file (arrays of numbers as NumPy, of strings as lists).

    Reads only the key/value section, fast: 262144 token strings in a fraction of a second.
    """
    p = Path(path)
    try:
        f = p.open("rb")
    except FileNotFoundError:
        raise UserError(f"{p}: no such file; pass the path of a .gguf model") from None
    except OSError as e:
        raise UserError(f"{p}: cannot open ({e.strerror}); check the path and its permissions") from None
    with f:
        try:
            buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except ValueError:
            raise UserError(f"{p}: the file is empty; it is not a GGUF model") from None
        try:
            return _parse_kv(buf, p)
        except (struct.error, IndexError, UnicodeDecodeError, ValueError) as e:
            raise UserError(f"{p}: truncated or malformed GGUF header ({e}); re-download the file") from None
        finally:
            buf.close()


def _parse_kv(buf: mmap.mmap, p: Path) -> dict:
    if buf[:4] != b"GGUF":
        raise UserError(f"{p}: not a GGUF file (bad magic); pass a .gguf model")
    (version,) = struct.unpack_from("<I", buf, 4)
    if version not in (2, 3):
        raise UserError(f"{p}: GGUF version {version} is not supported (2 or 3, little-endian); re-convert")
    n_kv = struct.unpack_from("<Q", buf, 16)[0]
    pos = 24
    unpack_from = struct.unpack_from
    out: dict = {}

    def read_str(pos: int) -> tuple[str, int]:
        (ln,) = unpack_from("<Q", buf, pos)
        end = pos + 8 + ln
        if end > len(buf):
            raise ValueError("string runs past the end of the file")
        return buf[pos + 8 : end].decode("utf-8", "surrogateescape"), end

    for _ in range(n_kv):
        key, pos = read_str(pos)
        (vtype,) = unpack_from("<I", buf, pos)
        pos += 4
        want = key.startswith("tokenizer.")
        if vtype == _STRING:
            val, pos = read_str(pos)
        elif vtype == _ARRAY:
            etype, count = unpack_from("<IQ", buf, pos)
            pos += 12
            if etype == _STRING:
                items = []
                append = items.append
                end = len(buf)
                for _ in range(count):
                    (ln,) = unpack_from("<Q", buf, pos)
                    nxt = pos + 8 + ln
                    if nxt > end:
                        raise ValueError("string array runs past the end of the file")
                    if want:
                        append(buf[pos + 8 : nxt].decode("utf-8", "surrogateescape"))
                    pos = nxt
                val = items
            elif etype in _NP:
                dt = np.dtype(_NP[etype])
                nbytes = dt.itemsize * count
                if pos + nbytes > len(buf):
                    raise ValueError("array runs past the end of the file")
                val = np.frombuffer(buf, dtype=dt, count=count, offset=pos).copy() if want else None
                pos += nbytes
            else:
                raise ValueError(f"unsupported array element type {etype} for key {key}")
        elif vtype in _SCALAR:
            fmt = _SCALAR[vtype]
            (val,) = unpack_from(fmt, buf, pos)
            pos += struct.calcsize(fmt)
        else:
            raise ValueError(f"unknown value type {vtype} for key {key}")
        if want:
            out[key] = val
    return out
