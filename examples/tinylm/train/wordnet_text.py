# SPDX-License-Identifier: MIT
"""WordNet glosses as plain text, with the deterministic split tinylm uses.

One line per synset, in the order noun, verb, adj, adv of Debian's
wordnet-base data files: "lemma, lemma: gloss".  Line i (0-based, counted
over the four files) goes to the validation split when i % 50 == 0, to the
test split when i % 50 == 1, and to training otherwise.  The C runtime
(examples/tinylm/text.c) implements the same rule, so nothing else is shipped.
"""
import os

WORDNET_DIR = "/usr/share/wordnet"
PARTS = ("noun", "verb", "adj", "adv")


def synset_line(raw):
    """The text of one data.* line, or None for the licence header lines."""
    if raw.startswith("  ") or "|" not in raw:
        return None
    head, gloss = raw.split("|", 1)
    fields = head.split()
    # offset lex_filenum ss_type w_cnt(hex) word lex_id [word lex_id ...]
    n = int(fields[3], 16)
    words = [fields[4 + 2 * j].replace("_", " ") for j in range(n)]
    # adjective markers such as "(a)" / "(p)" / "(ip)"
    words = [w.split("(")[0] for w in words]
    return ", ".join(words) + ": " + gloss.strip()


def read_lines(wordnet_dir=WORDNET_DIR):
    out = []
    for part in PARTS:
        with open(os.path.join(wordnet_dir, "data." + part), encoding="utf-8",
                  errors="replace") as f:
            for raw in f:
                line = synset_line(raw.rstrip("\n"))
                if line is not None:
                    out.append(line)
    return out


def split(lines):
    train, val, test = [], [], []
    for i, line in enumerate(lines):
        (val if i % 50 == 0 else test if i % 50 == 1 else train).append(line)
    return train, val, test
