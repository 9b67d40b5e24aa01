"""The `command` agent every provider's pipeline test runs."""

from __future__ import annotations

import textwrap

# Writes a file, reads its prompt from stdin, and asks the egress proxy for a host not on the allow list.
AGENT = textwrap.dedent("""\
    import os, pathlib, sys, urllib.request
    prompt = sys.stdin.read()
    pathlib.Path("src").mkdir(exist_ok=True)
    pathlib.Path("src/widget.py").write_text("def answer():\\n    return 42\\n")
    pathlib.Path("WHO.txt").write_text(f"{os.getuid()} {prompt.splitlines()[0]}\\n")
    try:
        urllib.request.urlopen("http://blocked.invalid/", timeout=5)
    except Exception as exc:
        print("refused:", exc, flush=True)
    print("edited src/widget.py", flush=True)
""")
