#!/usr/bin/env python3
"""Checks that KX's deserializer reads what qmesh-codec's encoder writes.

    PYKX_UNLICENSED=true ~/.cache/qmesh-venv/bin/python scripts/check_decode.py CASES.json

CASES.json (written by crates/qmesh-codec/tests/kx_accepts.rs) maps a case
name to {"hex": <our whole message>, "expect": <hex>}. For each case KX's
``d9`` (``kx.deserialize``) must accept our bytes, and KX's ``b9``
(``kx.serialize``) must write the value it read back as exactly ``expect``:
our own uncompressed encoding. So KX read the same value we meant, down to
every attribute, type and bit. Prints one line per failure and a closing
``N passed, M failed`` line; exits 1 on any failure.
"""

import json
import sys

import pykx as kx


def main(path):
    with open(path) as f:
        cases = json.load(f)
    passed = failed = 0
    for name, case in sorted(cases.items()):
        ours = bytes.fromhex(case["hex"])
        expect = bytes.fromhex(case["expect"])
        try:
            value = kx.deserialize(ours)
            back = bytes(kx.serialize(value, mode=6, wait=ours[1]).copy())
        except Exception as e:  # noqa: BLE001 - any failure of KX's reader is a failed case
            print(f"FAIL {name}: KX could not read our bytes: {type(e).__name__}: {e}")
            failed += 1
            continue
        if back != expect:
            print(f"FAIL {name}: KX read a different value\n  ours {expect.hex()[:400]}\n  kx   {back.hex()[:400]}")
            failed += 1
        else:
            passed += 1
    print(f"check_decode: {passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
