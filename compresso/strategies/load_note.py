"""``HOW_TO_LOAD.md``: what a folder in a compresso-only format holds and how to load it.

Written beside formats that plain transformers cannot load (INT8, pruned shapes), so that a user who
finds the folder learns from the folder itself why ``from_pretrained`` refuses it.
"""

from __future__ import annotations

from pathlib import Path

NOTE_FILE = "HOW_TO_LOAD.md"


def write_load_note(path: Path, fmt: str, what: str, plain: str, extra: str = "") -> None:
    text = f"""# How to load this folder

This is {what}, saved by compresso in its `{fmt}` format (see `compresso.json`).
Load it with compresso (`pip install compresso`):

```python
import compresso

bundle = compresso.load("{Path(path).name}")   # this folder
enc = bundle.tokenizer(["Un text."], return_tensors="pt")
out = bundle.model(**enc)                        # same call and outputs as a transformers model
```

Plain transformers: {plain}.
{extra}"""
    (Path(path) / NOTE_FILE).write_text(text)
