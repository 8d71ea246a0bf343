"""The corpus of the language-model examples: this repository's own README and sources, tokenised into words
and frequent word pairs and triples, a vocabulary of tens of thousands of tokens (the size where the output
layer's logits dominate a training step's memory).

Words: runs of letters or digits, and single punctuation characters. Every run of two or three words that
occurs at least twice becomes a token of its own, and the text is re-read greedily, the longest known run
taking the place of its words. Deterministic: the same files give the same vocabulary and token ids on every
machine.
"""
import collections
import os
import re

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXTENSIONS = (".md", ".py", ".cpp", ".h", ".cu", ".cuh", ".toml")
SKIPPED_DIRECTORIES = {".git", ".venv", "build", "results", "__pycache__", ".hypothesis"}
_WORD = re.compile(r"[A-Za-z]+|\d+|[^\sA-Za-z\d]")


def corpus_text(root=ROOT):
    """The repository's text files, concatenated in path order."""
    parts = []
    for directory, subdirectories, files in os.walk(root):
        subdirectories[:] = sorted(d for d in subdirectories if d not in SKIPPED_DIRECTORIES and not d.startswith(".venv"))
        for name in sorted(files):
            if name.endswith(EXTENSIONS):
                with open(os.path.join(directory, name), encoding="utf-8", errors="replace") as f:
                    parts.append(f.read())
    return "\n".join(parts)


class Vocabulary:
    """Words, and runs of two or three words seen at least twice, with their ids."""

    LONGEST = 3

    def __init__(self, words):
        counts = collections.Counter(words)
        for n in range(2, self.LONGEST + 1):
            runs = collections.Counter(zip(*(words[i:] for i in range(n))))
            counts.update({" ".join(run): c for run, c in runs.items() if c >= 2})
        self.tokens = sorted(counts, key=lambda token: (-counts[token], token))
        self.ids = {token: i for i, token in enumerate(self.tokens)}

    def __len__(self):
        return len(self.tokens)

    def encode(self, words):
        ids, i = [], 0
        while i < len(words):
            for n in range(self.LONGEST, 0, -1):
                token = self.ids.get(" ".join(words[i:i + n])) if i + n <= len(words) else None
                if token is not None:
                    ids.append(token)
                    i += n
                    break
        return torch.tensor(ids, dtype=torch.long)


def load():
    """(vocabulary, token ids of the whole corpus)."""
    words = _WORD.findall(corpus_text())
    vocabulary = Vocabulary(words)
    return vocabulary, vocabulary.encode(words)
