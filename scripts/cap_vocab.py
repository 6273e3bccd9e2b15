#!/usr/bin/env python3
"""A token file with a smaller vocabulary, for models too small to afford GPT-2's 50,257-row head on a CPU.

usage: cap_vocab.py IN.tok OUT.tok --vocab K

The K-1 most frequent token ids of IN's training split become 0 .. K-2 (most frequent first; ties by id) and
every other id becomes K-1, one "rare token" class; both splits are mapped alike. The training and validation
order, the split sizes and the documents' end-of-text tokens (the most frequent ids keep theirs) are unchanged.
OUT records IN's sources, K and the map in its header, so the ids can be read back into GPT-2 tokens.
Losses on OUT are not comparable with losses on IN: the task predicts K classes instead of 50,257.
"""
import argparse
import json
import os
import struct
import sys

import numpy as np

MAGIC, VERSION, HEADER = b"MUETOKS1", 1, 36  # data/tokens.h


def read_token_file(path):
    """(vocab, sources JSON text, train ids, val ids) of a mue token file; a one-line error when it is not one."""
    with open(path, "rb") as f:
        head = f.read(HEADER)
        if len(head) < HEADER or head[:8] != MAGIC:
            sys.exit(f"{path}: not a mue token file (bad magic or shorter than the header)")
        version, vocab, n_train, n_val, sources_len = struct.unpack("<IIQQI", head[8:])
        if version != VERSION:
            sys.exit(f"{path}: token file version {version}, this script reads {VERSION}")
        sources = f.read(sources_len).decode().rstrip(" ")
    want = HEADER + sources_len + 2 * (n_train + n_val)
    if os.path.getsize(path) != want:
        sys.exit(f"{path}: header says {want} bytes, the file has {os.path.getsize(path)}")
    ids = np.memmap(path, dtype="<u2", mode="r", offset=HEADER + sources_len, shape=(n_train + n_val,))
    return vocab, sources, ids[:n_train], ids[n_train:]


def write_token_file(path, vocab, sources, train, val):
    """The layout of data/tokens.h, written to PATH.tmp and renamed (a crash leaves no half file)."""
    text = sources.encode()
    text += b" " * (-(HEADER + len(text)) % 8)  # the tokens start 8-byte aligned, as the C++ writer pads them
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(MAGIC + struct.pack("<IIQQI", VERSION, vocab, len(train), len(val), len(text)) + text)
        f.write(np.ascontiguousarray(train, dtype="<u2").tobytes())
        f.write(np.ascontiguousarray(val, dtype="<u2").tobytes())
    os.replace(tmp, path)


def frequency_map(train, vocab, k):
    """old id -> new id: the k-1 most frequent training ids to 0 .. k-2 in order of frequency, the rest to k-1."""
    counts = np.bincount(train, minlength=vocab)
    order = np.lexsort((np.arange(vocab), -counts))  # by count descending, then by id
    new = np.full(vocab, k - 1, dtype=np.uint16)
    new[order[: k - 1]] = np.arange(k - 1, dtype=np.uint16)
    return new, order[: k - 1]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("src")
    ap.add_argument("out")
    ap.add_argument("--vocab", type=int, required=True, help="K, the new vocabulary (2 .. the source's)")
    a = ap.parse_args()
    vocab, sources, train, val = read_token_file(a.src)
    if not 2 <= a.vocab <= vocab:
        sys.exit(f"--vocab {a.vocab}: must be in 2 .. {vocab} (the source's vocabulary)")
    if os.path.abspath(a.src) == os.path.abspath(a.out):
        sys.exit(f"{a.out}: is the source file; write the capped file elsewhere")
    new, kept = frequency_map(np.asarray(train), vocab, a.vocab)
    try:
        source_json = json.loads(sources)
    except ValueError:
        source_json = sources
    header = {"capped_from": {"path": a.src, "vocab": vocab, "sources": source_json},
              "vocab_cap": {"vocab": a.vocab, "rare_token": a.vocab - 1,
                            "rule": "the vocab-1 most frequent training ids, most frequent first (ties by id); "
                                    "all others -> the rare token",
                            "kept_ids": [int(i) for i in kept]}}
    write_token_file(a.out, a.vocab, json.dumps(header, separators=(",", ":")), new[train], new[val])
    rare = float(np.mean(new[val] == a.vocab - 1)) if len(val) else 0.0
    print(f"wrote {a.out}: vocabulary {a.vocab} (of {vocab}), {len(train):,} train + {len(val):,} val tokens, "
          f"{100 * rare:.1f}% of the validation tokens are the rare token")


if __name__ == "__main__":
    main()
