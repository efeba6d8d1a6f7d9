"""Detector precision and recall on a generated, labelled set.

Generates values of each data class (valid by its rules) and near misses
(Luhn-failing card numbers, SSNs with a zero group, IBANs with a wrong check,
random digit strings, times, version numbers, prose), embeds some in free
text, runs :func:`steward_proxy.masking.detect.find`, and prints per class
precision (found spans that are labelled that class) and recall (labelled
values found), and the throughput on values with and without candidates.
Nothing is asserted. Usage::

    .venv/bin/python bench/detectors.py [--count 5000] [--seed 1]
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections import Counter

from steward_proxy.masking.detect import DATA_CLASSES, find, luhn_valid


def _luhn_complete(rng: random.Random, prefix: str, length: int) -> str:
    body = prefix + "".join(rng.choice("0123456789") for _ in range(length - len(prefix) - 1))
    for digit in "0123456789":
        if luhn_valid((body + digit).encode()):
            return body + digit
    raise AssertionError("unreachable")


def _iban(rng: random.Random, broken: bool = False) -> str:
    bban = "".join(rng.choice("0123456789") for _ in range(18))
    moved = bban + "1314" + "00"  # DE = 13 14
    check = 98 - int(moved) % 97
    if broken:
        check = check % 97 + 1 if check != 97 else 1
    return f"DE{check:02d}{bban}"


def positives(rng: random.Random) -> list[tuple[str, str]]:
    first = rng.choice(["ann", "li", "jose", "maria", "k.smith", "o'neil"]).replace("'", "")
    card = _luhn_complete(rng, rng.choice(["4", "51", "55", "37"]), rng.choice([15, 16]))
    return [
        (
            "EMAIL_ADDRESS",
            f"{first}{rng.randint(1, 999)}@{rng.choice(['example.org', 'mail.co.uk'])}",
        ),
        (
            "CREDIT_CARD",
            " ".join(card[i : i + 4] for i in range(0, len(card), 4)) if len(card) == 16 else card,
        ),
        (
            "US_SSN",
            f"{rng.randint(1, 665):03d}-{rng.randint(1, 99):02d}-{rng.randint(1, 9999):04d}",
        ),
        (
            "PHONE_NUMBER",
            rng.choice(
                [
                    f"({rng.randint(201, 989)}) {rng.randint(200, 999)}-{rng.randint(0, 9999):04d}",
                    f"+44 20 {rng.randint(1000, 9999)} {rng.randint(1000, 9999)}",
                ]
            ),
        ),
        ("IBAN_CODE", _iban(rng)),
        (
            "IP_ADDRESS",
            rng.choice(
                [
                    ".".join(str(rng.randint(0, 255)) for _ in range(4)),
                    f"2001:db8::{rng.randint(1, 65535):x}",
                ]
            ),
        ),
    ]


def negatives(rng: random.Random) -> list[str]:
    card = _luhn_complete(rng, "4", 16)
    bad_card = card[:-1] + str((int(card[-1]) + 1) % 10)
    return [
        bad_card,
        "".join(rng.choice("0123456789") for _ in range(rng.randint(6, 20))),
        f"{rng.randint(100, 665)}-00-{rng.randint(1000, 9999)}",
        f"000-{rng.randint(10, 99)}-{rng.randint(1000, 9999)}",
        _iban(rng, broken=True),
        f"{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:{rng.randint(0, 59):02d}",
        f"v{rng.randint(1, 9)}.{rng.randint(0, 20)}.{rng.randint(0, 99)}",
        rng.choice(["order shipped", "see attached", "n/a", "user@localhost", "3.14159"]),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=5000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    labelled: list[tuple[bytes, str | None]] = []
    for _ in range(args.count):
        for data_class, value in positives(rng):
            text = value if rng.random() < 0.5 else f"note: {value} (from the form)"
            labelled.append((text.encode(), data_class))
        for value in negatives(rng):
            labelled.append((value.encode(), None))
    true_pos, false_pos, false_neg = Counter(), Counter(), Counter()
    start = time.perf_counter()
    for value, label in labelled:
        found = {m[2] for m in find(value)}
        for data_class in found:
            if data_class == label:
                true_pos[data_class] += 1
            else:
                false_pos[data_class] += 1
        if label is not None and label not in found:
            false_neg[label] += 1
    elapsed = time.perf_counter() - start
    print(f"{len(labelled)} labelled values ({args.count} per class and 8 near misses each round)")
    print(f"{'class':<14} {'precision':>9} {'recall':>7}")
    for data_class in DATA_CLASSES:
        tp, fp, fn = true_pos[data_class], false_pos[data_class], false_neg[data_class]
        precision = tp / (tp + fp) if tp + fp else 1.0
        recall = tp / (tp + fn) if tp + fn else 1.0
        print(f"{data_class:<14} {precision:>9.3f} {recall:>7.3f}")
    print(f"throughput: {len(labelled) / elapsed:,.0f} values/s (mixed)")
    plain = [b"no contact details here"] * 100_000
    start = time.perf_counter()
    for value in plain:
        find(value)
    print(f"throughput: {len(plain) / (time.perf_counter() - start):,.0f} values/s (prose)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
