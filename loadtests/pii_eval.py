#!/usr/bin/env python3
"""Precision and recall of the policy's PII rules on a labelled synthetic corpus.

The corpus comes from presidio-evaluator's sentence generator (Faker values planted in its ~200
templates of real-world sentences, every span labelled), with a fixed seed so a run is repeatable.
Each sentence goes through `sluice guardrails scan` exactly as a policy author would run it; a
finding counts as a true positive when it overlaps a labelled span of the same entity.

    python3 loadtests/pii_eval.py --sluice target/release/sluice --policy guardrails \
        --samples 5000 --seed 42

Prints one Markdown table: per entity, labelled spans, findings, true positives, precision,
recall, and the share of hits whose span is exact. With --errors N it also prints up to N missed
and N spurious examples per entity, to see what a rule gets wrong.
"""

import argparse
import collections
import json
import subprocess
import sys

# Presidio's entity names against the entities the `pii` rules report.
ENTITIES = {
    "EMAIL_ADDRESS": "email",
    "PHONE_NUMBER": "phone",
    "CREDIT_CARD": "credit_card",
    "IBAN_CODE": "iban",
    "US_SSN": "us_ssn",
    "IP_ADDRESS": "ip",
}


def sluice_entity(name):
    return "ip" if name in ("ipv4", "ipv6") else name


def byte_offset(text, char_offset):
    return len(text[:char_offset].encode("utf-8"))


def generate(samples, seed):
    from presidio_evaluator.data_generator import PresidioSentenceFaker

    faker = PresidioSentenceFaker("en_US", lower_case_ratio=0.05, random_seed=seed)
    corpus = []
    for s in faker.generate_new_fake_sentences(num_samples=samples):
        text, at = unescape_newlines(s.full_text)
        gold = []
        for span in s.spans:
            entity = ENTITIES.get(span.entity_type)
            if entity is None:
                continue
            gold.append(
                (
                    entity,
                    byte_offset(text, at[span.start_position]),
                    byte_offset(text, at[span.end_position]),
                )
            )
        corpus.append((text, gold))
    return corpus


def unescape_newlines(raw):
    """The templates write line breaks as a backslash and an `n`; they mean newlines (addresses,
    signatures, forms). Returns the text with real newlines and, for every offset of `raw`, the
    offset of the same place in the text."""
    out, at, i = [], [], 0
    while i < len(raw):
        at.append(len(out))
        if raw.startswith("\\n", i):
            at.append(len(out))
            out.append("\n")
            i += 2
        else:
            out.append(raw[i])
            i += 1
    at.append(len(out))
    return "".join(out), at


def scan(sluice, policy, texts):
    lines = "".join(json.dumps({"text": t}) + "\n" for t in texts)
    out = subprocess.run(
        [sluice, "guardrails", "scan", "--policy", policy, "--direction", "input"],
        input=lines.encode(),
        capture_output=True,
        check=True,
    ).stdout
    found = collections.defaultdict(list)
    for line in out.decode().splitlines():
        f = json.loads(line)
        if f["kind"] != "pii":
            continue
        found[f["line"]].append((sluice_entity(f["entity"]), f["start"], f["end"]))
    return found


def overlaps(a, b):
    return a[1] < b[2] and b[1] < a[2]


def evaluate(corpus, found, errors):
    stats = {e: collections.Counter() for e in ENTITIES.values()}
    missed = collections.defaultdict(list)
    spurious = collections.defaultdict(list)
    for i, (text, gold) in enumerate(corpus):
        preds = found.get(i, [])
        for g in gold:
            stats[g[0]]["gold"] += 1
            hits = [p for p in preds if p[0] == g[0] and overlaps(p, g)]
            if hits:
                stats[g[0]]["recalled"] += 1
                if any(p[1] == g[1] and p[2] == g[2] for p in hits):
                    stats[g[0]]["exact"] += 1
            elif len(missed[g[0]]) < errors:
                missed[g[0]].append(text.encode()[g[1] : g[2]].decode())
        for p in preds:
            if p[0] not in stats:
                continue
            stats[p[0]]["found"] += 1
            if any(g[0] == p[0] and overlaps(p, g) for g in gold):
                stats[p[0]]["correct"] += 1
            elif len(spurious[p[0]]) < errors:
                spurious[p[0]].append((text.encode()[p[1] : p[2]].decode(), text))
    return stats, missed, spurious


def ratio(n, d):
    return f"{n / d:.3f}" if d else "–"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sluice", default="target/release/sluice")
    ap.add_argument("--policy", default="guardrails")
    ap.add_argument("--samples", type=int, default=5000)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--errors", type=int, default=0)
    args = ap.parse_args()

    corpus = generate(args.samples, args.seed)
    found = scan(args.sluice, args.policy, [t for t, _ in corpus])
    stats, missed, spurious = evaluate(corpus, found, args.errors)

    print(f"{len(corpus)} sentences, seed {args.seed}\n")
    print("| entity | labelled | found | true positives | precision | recall | exact span |")
    print("|---|---|---|---|---|---|---|")
    for entity, s in stats.items():
        print(
            f"| {entity} | {s['gold']} | {s['found']} | {s['correct']} | "
            f"{ratio(s['correct'], s['found'])} | {ratio(s['recalled'], s['gold'])} | "
            f"{ratio(s['exact'], s['recalled'])} |"
        )
    for entity in stats:
        for value in missed.get(entity, []):
            print(f"missed {entity}: {value!r}", file=sys.stderr)
        for value, text in spurious.get(entity, []):
            print(f"spurious {entity}: {value!r} in {text!r}", file=sys.stderr)


if __name__ == "__main__":
    main()
